"""Evaluation: `floatctl eval` and the scores it and `floatctl sample` report.

Everything here reads videos (and their audio) and returns numbers: the weight-free lip-sync proxy
(``lipsync.py``), the face analysis with dlib's shipped models (``faces.py``), the metrics on frames and
landmarks (``metrics.py``), FID, FVD and LSE-C/D from weights the user gives (``fid.py``, ``fvd.py``,
``syncnet.py``), and the command that collects a run's results into tables (``command.py``).
Evaluation never imports sampling; sampling may import evaluation.
"""
