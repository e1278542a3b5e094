"""mp4 encoding overlapped with decoding (trainer/sample/video_stream.py via render.render_to_mp4) and the decoder's
precision: the streamed file holds every frame and the audio, an encoder failure is one SampleError naming the file
(never a hang), a decoding failure leaves no file, bf16 stays close to fp32 and fp32 is the CPU default."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from float.motion_autoencoder import MotionAutoEncoder
from test_render import moving_gradient, probe
from trainer.errors import SampleError
from trainer.sample.render import (decoder_precision, encode_reference, mp4_stream, render_motion, render_to_mp4,
                                   write_mp4)
from trainer.sample.video_stream import Mp4Stream

HANG_S = 30  # a call that has not returned by then is taken as a hang


def finishes(fn):
    """fn() in a thread, joined with a timeout: (returned value or raised exception); fails on a hang."""
    box = {}

    def call():
        try:
            box["value"] = fn()
        except BaseException as error:  # handed back to the test
            box["error"] = error

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(HANG_S)
    assert not worker.is_alive(), "the call hung"
    return box.get("value"), box.get("error")


@pytest.fixture(scope="module")
def autoencoder():
    torch.manual_seed(0)
    return MotionAutoEncoder(16).eval()


def test_streamed_mp4_holds_every_frame_and_the_audio_like_write_mp4(tmp_path, one_thread):
    frames = moving_gradient(30, 32, 48)
    audio = 0.3 * np.sin(np.linspace(0, 300, 30 * 640)).astype(np.float32)
    with mp4_stream(tmp_path / "streamed.mp4", len(frames), (48, 32), audio) as stream:
        for start in range(0, len(frames), 7):  # uneven batches, as a decoder hands them over
            stream.put(frames[start:start + 7])
    streamed = probe(stream.close())
    whole = probe(write_mp4(tmp_path / "whole.mp4", frames, audio=audio))
    assert streamed["frames"].shape == whole["frames"].shape == (30, 32, 48, 3)
    # The same encoder settings as write_mp4: the same picture (x264's own threading aside), near the source.
    assert np.abs(streamed["frames"].astype(int) - whole["frames"].astype(int)).mean() < 1
    assert np.abs(streamed["frames"].astype(int) - frames.astype(int)).mean() < 6
    assert streamed["audio"]["rate"] == 16000 and streamed["audio"]["codec"] == "aac"
    assert abs(len(streamed["audio"]["samples"]) - len(whole["audio"]["samples"])) <= 1024


def test_render_to_mp4_writes_the_frames_it_returns(tmp_path, autoencoder, one_thread):
    ref = encode_reference(autoencoder, np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    motion = ref.motion + 0.3 * torch.randn(9, 512, generator=torch.Generator().manual_seed(1))
    frames, path = render_to_mp4(autoencoder, ref, motion, tmp_path / "clip.mp4", batch_size=4)
    assert np.array_equal(frames, render_motion(autoencoder, ref, motion, batch_size=4))
    after, later = render_to_mp4(autoencoder, ref, motion, tmp_path / "after.mp4", batch_size=4, overlap=False)
    assert np.array_equal(after, frames)  # the former way: decode everything, then encode
    written, reference = probe(path)["frames"], probe(later)["frames"]
    assert written.shape == reference.shape == (9, 16, 16, 3)
    # The same encoder on the same frames: the same picture (H.264 of 16 px noise is far from the source in both).
    assert np.abs(written.astype(int) - reference.astype(int)).mean() < 1


def test_an_encoder_that_cannot_start_is_one_error_naming_the_file_not_a_hang(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    target = blocker / "clip.mp4"
    frames = moving_gradient(4, 16, 16)

    def produce():
        with mp4_stream(target, 200, (16, 16)) as stream:
            for _ in range(50):  # far more than the queue holds
                stream.put(frames)

    _, error = finishes(produce)
    assert isinstance(error, SampleError)
    message = str(error)
    assert str(target) in message and "mp4 encoder failed" in message and "\n" not in message


def test_an_encoder_failing_midway_stops_the_producer_with_its_reason(tmp_path):
    def write(path, stream):
        for k, _ in enumerate(stream):
            if k == 5:
                raise OSError(28, "No space left on device")
        return path

    def produce():
        stream = Mp4Stream(tmp_path / "full.mp4", write, max_batches=1)
        for _ in range(100):
            stream.put(np.zeros((2, 4, 4, 3), np.uint8))
        return stream.close()

    _, error = finishes(produce)
    assert isinstance(error, SampleError)
    assert "full.mp4" in str(error) and "No space left on device" in str(error)


def test_a_decoding_failure_stops_the_writer_and_leaves_no_file(tmp_path):
    target = tmp_path / "partial.mp4"

    def produce():
        with mp4_stream(target, 20, (16, 16)) as stream:
            stream.put(moving_gradient(5, 16, 16))
            raise RuntimeError("CUDA out of memory")

    _, error = finishes(produce)
    assert isinstance(error, RuntimeError) and "out of memory" in str(error)  # the decoder's error, unchanged
    assert not target.exists() and list(tmp_path.iterdir()) == []  # the atomic writer dropped its temporary file
    assert stream_threads() == []


def stream_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("mp4 ")]


def test_decoder_precision_is_fp32_on_the_cpu_and_bf16_on_cuda_by_default():
    assert decoder_precision("auto", "cpu") == "fp32"
    assert decoder_precision("auto", torch.device("cuda")) == "bf16"
    assert decoder_precision("fp32", "cuda") == "fp32" and decoder_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="fp16.*auto, fp32, bf16"):
        decoder_precision("fp16", "cpu")


def test_bf16_decoding_is_close_to_fp32_and_auto_is_fp32_on_the_cpu(autoencoder, one_thread):
    ref = encode_reference(autoencoder, np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    motion = ref.motion + 0.3 * torch.randn(6, 512, generator=torch.Generator().manual_seed(4))
    fp32 = render_motion(autoencoder, ref, motion, batch_size=3)
    assert np.array_equal(render_motion(autoencoder, ref, motion, batch_size=3, precision="auto"), fp32)
    bf16 = render_motion(autoencoder, ref, motion, batch_size=3, precision="bf16")
    diff = np.abs(bf16.astype(int) - fp32.astype(int))
    assert 0 < diff.mean() < 4  # bf16 really ran (not bit-identical), and within a few grey levels
