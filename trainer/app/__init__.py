"""`floatctl app`: a local web page (Gradio) to animate a portrait with a checkpoint and watch a run."""
