"""The Gradio page of `floatctl app`: tab "Animate" (trainer/app/animate.py) and tab "Watch a run"
(trainer/app/watch.py). Gradio is imported here only: the rest of the app runs and is tested without it.

Inputs go in as file paths (``gr.File`` for the portrait, so a non-image reaches
our own check and its message, not a Gradio decoding error); errors come back
in the status box (``elem_id="status"``), and the server keeps serving.

Served beyond this machine (``--host``), the page is ``locked``: the checkpoint and
run-folder fields are fixed to the command line's, in the page and in the handlers
(a client can call the API with any value), so a visitor cannot make the server
load or list files by typing paths.
"""
from __future__ import annotations


from trainer.app.animate import EMOTION_OPTIONS, EMOTION_FROM_SPEECH, SOLVERS, AppConfig, animate
from trainer.app.watch import view_run

INTRO = ("Animate a portrait with speech, with the same crop, audio reading and sampling as `floatctl sample`. "
         "Upload a portrait and an audio file (or record one), then press **Animate**.")


def build_app(config: AppConfig):
    """The gr.Blocks page for ``config`` (not launched)."""
    import gradio as gr

    def on_animate(checkpoint, image, audio, emotion, a_cfg, e_cfg, nfe, solver, seed,
                   progress=gr.Progress()):
        lines = [0]

        def log(line: str) -> None:  # run_sample's log lines as progress: about a dozen per request
            lines[0] += 1
            progress(min(0.95, lines[0] / 14), desc=line[:90])

        progress(0.0, desc="checking the inputs")
        checkpoint = config.checkpoint if config.locked else checkpoint
        result = animate(config, image, audio, emotion, a_cfg, e_cfg, nfe, solver, seed, checkpoint, log)
        return result.video, result.plot, result.message

    def on_refresh(run_dir):
        view = view_run(config.run_dir if config.locked else run_dir, config.work_dir)
        return view.message, view.curves, view.images, view.video

    with gr.Blocks(title="float-train", analytics_enabled=False) as page:
        gr.Markdown("# float-train")
        with gr.Tab("Animate a portrait"):
            gr.Markdown(INTRO)
            with gr.Row():
                with gr.Column():
                    checkpoint = gr.Textbox(str(config.checkpoint), label="Checkpoint (a training checkpoint, "
                                            "a run folder or float.pth)", elem_id="checkpoint",
                                            interactive=not config.locked)
                    image = gr.File(label="Portrait (an image: jpg, png, ...)", type="filepath",
                                    elem_id="portrait")
                    audio = gr.Audio(label="Speech (a file, or record from the microphone)", type="filepath",
                                     sources=["upload", "microphone"], format=None, elem_id="speech")
                    emotion = gr.Dropdown(list(EMOTION_OPTIONS), value=EMOTION_FROM_SPEECH, label="Emotion "
                                          "(from the speech: the speech-emotion model when one is known)")
                    with gr.Row():
                        a_cfg = gr.Slider(0.0, 5.0, value=2.0, step=0.1, label="Audio guidance")
                        e_cfg = gr.Slider(0.0, 5.0, value=1.0, step=0.1, label="Emotion guidance")
                    with gr.Row():
                        nfe = gr.Slider(1, 50, value=10, step=1, label="NFE (vector-field evaluations)")
                        solver = gr.Dropdown(list(SOLVERS), value="euler", label="Solver")
                        seed = gr.Number(0, precision=0, label="Seed")
                    button = gr.Button("Animate", variant="primary", elem_id="animate")
                with gr.Column():
                    status = gr.Markdown("", elem_id="status")
                    video = gr.Video(label="Generated video (with its audio)", elem_id="video")
                    plot = gr.Image(label="Motion plot", type="filepath", elem_id="plot")
            button.click(on_animate, [checkpoint, image, audio, emotion, a_cfg, e_cfg, nfe, solver, seed],
                         [video, plot, status])
        with gr.Tab("Watch a run"):
            with gr.Row():
                run_dir = gr.Textbox(str(config.run_dir or ""), label="Run folder (runs/NAME)", elem_id="run_dir",
                                     interactive=not config.locked)
                refresh = gr.Button("Refresh", elem_id="refresh")
            run_status = gr.Markdown("", elem_id="run_status")
            curves = gr.Image(label="Curves (metrics.jsonl)", type="filepath")
            with gr.Row():
                gallery = gr.Gallery(label="Latest samples and grids", columns=2)
                sample_video = gr.Video(label="Latest sample video")
            outputs = [run_status, curves, gallery, sample_video]
            # Reading a run folder is cheap: it need not wait behind a generation (concurrency_limit=None).
            refresh.click(on_refresh, [run_dir], outputs, concurrency_limit=None)
            gr.Timer(15.0).tick(on_refresh, [run_dir], outputs, concurrency_limit=None)  # a live run moves on
            page.load(on_refresh, [run_dir], outputs, concurrency_limit=None)
    return page


def launch(config: AppConfig, host: str = "127.0.0.1", port: int | None = None, block: bool = True):
    """Start serving; returns the page (already serving) when ``block`` is False."""
    page = build_app(config)
    allowed = [str(config.work_dir)] + ([str(config.run_dir)] if config.run_dir else [])
    page.queue(default_concurrency_limit=1)  # one generation at a time: the model fills the CPU / GPU
    page.launch(server_name=host, server_port=port, max_file_size=f"{int(config.max_upload_mb * 1024)}kb",
                allowed_paths=allowed, prevent_thread_lock=not block, show_error=True, quiet=not block)
    return page
