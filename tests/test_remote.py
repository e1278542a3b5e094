"""Shards anywhere: folder URLs and patterns served by a local HTTP server (127.0.0.1 only),
the unreadable-shard rule (404, cut short, stalled, unreachable), and other schemes'
dispatch through WebDataset's handler table without a network."""
from __future__ import annotations

import io
import logging
import shutil
import socket
import threading
import time

import pytest

from shard_factory import make_shards, read_clips
from shards import remote
from shards.dataset import TrainWindows
from shards.http_serve import serve_folder
from shards.sources import manifest_of, read_manifest_at, shard_urls
from shards.tar import iter_tar_samples
from shards.windows import WindowSpec

SPEC = WindowSpec(num_frames=20, num_prev_frames=4, windows_per_clip=1)
ODD_NAME = "my shards & more"  # a space and an ampersand: data in a URL, never shell syntax


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served") / ODD_NAME
    make_shards(folder, {"train": 12, "val": 2}, frames=30, dim_w=8, audio_dim=6, seed=1, clips_per_shard=3)
    return folder


def _keys(urls, **kw):
    return sorted(w["key"] for w in TrainWindows(urls, SPEC, resampled=False, **kw))


def test_a_folder_url_and_a_pattern_stream_like_the_local_folder(shard_dir):
    local = shard_urls(shard_dir, "train")
    with serve_folder(shard_dir.parent) as server:
        root = f"{server.url}/{ODD_NAME}"
        assert manifest_of(root) == manifest_of(shard_dir)
        urls = shard_urls(root, "train")
        assert urls == [f"{root}/train-00000{i}.tar" for i in range(4)]  # %-quoted when opened
        assert _keys(urls) == _keys(local)
        # A brace pattern: its manifest is the one beside it; other splits come from that manifest.
        pattern = f"{root}/train-{{000000..000001}}.tar"
        assert read_manifest_at(pattern)["fingerprint"] == manifest_of(shard_dir)["fingerprint"]
        assert shard_urls(pattern, "train") == [f"{root}/train-000000.tar", f"{root}/train-000001.tar"]
        assert shard_urls(pattern, "val") == [f"{root}/val-000000.tar"]
        assert _keys(shard_urls(pattern, "train")) == _keys(local[:2])
        assert any(r == f"{ODD_NAME}/train-000000.tar" for r in server.requests)


def test_a_404_and_a_cut_short_shard_are_retried_then_skipped(shard_dir, tmp_path, caplog):
    served = tmp_path / "copy"
    shutil.copytree(shard_dir, served)
    (served / "train-000002.tar").unlink()  # listed in the manifest, answered with 404
    caplog.set_level(logging.WARNING, logger="shards.dataset")
    with serve_folder(served, cut={"train-000001.tar"}) as server:
        urls = shard_urls(server.url, "train")
        ds = TrainWindows(urls, SPEC, resampled=False, retry_delay=0.01)
        start = time.monotonic()
        keys = sorted(w["key"] for w in ds)
        assert time.monotonic() - start < 60
        requests = list(server.requests)
    intact = sorted(read_clips(served / "train-000000.tar")) + sorted(read_clips(served / "train-000003.tar"))
    assert set(intact) <= set(keys), "the readable shards are read whole"
    assert not {k for k in keys if k.startswith("train-s002")}, "nothing from the missing shard"
    assert requests.count("train-000002.tar") == 3 and requests.count("train-000001.tar") == 3, "2 retries each"
    assert len(keys) == len(set(keys)), "a retry does not repeat the samples already used"
    assert ds.skipped == 2
    log = caplog.text
    assert f"{urls[2]}: unreadable after 3 tries" in log and "HTTP error" in log
    assert f"{urls[1]}: unreadable after 3 tries" in log and "cut short" in log
    assert "retry 1 of 2" in log


def test_unreachable_storage_stops_the_run_naming_the_url(shard_dir):
    with serve_folder(shard_dir) as server:
        urls = shard_urls(server.url, "train")
    # The server is gone: every read is refused. The stream stops instead of retrying forever.
    ds = TrainWindows(urls, SPEC, retry_delay=0.01, max_failed_reads=3)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"3 shard reads in a row failed.*127\.0\.0\.1"):
        next(iter(ds))
    assert time.monotonic() - start < 60


def test_a_stalled_download_is_stopped_not_waited_on_forever():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(20)

    def stall():  # answers headers, then sends nothing for longer than the guard waits
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        time.sleep(6)
        conn.close()

    thread = threading.Thread(target=stall, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/train-000000.tar"
    start = time.monotonic()
    stream = remote.open_location(url, stall=1.0)
    with pytest.raises(OSError, match="stalled"):
        stream.read(10240)
    stream.close()
    assert time.monotonic() - start < 5
    thread.join(10)
    listener.close()


def test_the_pure_python_fallback_reads_http_and_reports_a_cut(shard_dir, monkeypatch):
    monkeypatch.setitem(remote.wds_gopen.gopen_schemes, "http", remote.gopen_urllib)
    with serve_folder(shard_dir, cut={"train-000001.tar"}) as server:
        urls = shard_urls(server.url, "train")
        assert [k for k, _ in iter_tar_samples(urls[0])] == sorted(read_clips(shard_dir / "train-000000.tar"))
        with pytest.raises(OSError, match="train-000001.tar"):
            list(iter_tar_samples(urls[1]))


def test_s3_and_gs_go_through_the_gopen_scheme_table(shard_dir, monkeypatch):
    remote.register_handlers()
    table = remote.wds_gopen.gopen_schemes
    assert table["s3"] is remote.gopen_s3 and table["gs"] is remote.wds_gopen.gopen_gsutil
    # The AWS CLI gets the URL as one argument (no shell): spaces and & stay in the key.
    seen = []
    with monkeypatch.context() as m:
        m.setattr(remote.wds_gopen, "Pipe", lambda args, **kw: seen.append(args) or io.BytesIO(b""))
        remote.gopen_s3("s3://bucket/a b&c/train-000000.tar")
    assert seen == [["aws", "s3", "cp", "--only-show-errors", "s3://bucket/a b&c/train-000000.tar", "-"]]
    # A handler registered for a scheme receives that scheme's shard URLs (quoted) and manifest.
    opened = []

    def fake(url, mode="rb", bufsize=8192):
        opened.append(url)
        name = url.rsplit("/", 1)[-1]
        return open(shard_dir / name, "rb")

    monkeypatch.setitem(table, "s3", fake)
    monkeypatch.setitem(table, "gs", fake)
    for scheme in ("s3", "gs"):
        root = f"{scheme}://bucket/{ODD_NAME}"
        urls = shard_urls(root, "train")
        assert urls[0] == f"{root}/train-000000.tar"
        assert _keys(urls[:1]) == sorted(read_clips(shard_dir / "train-000000.tar"))
    assert opened == [f"{s}://bucket/my%20shards%20&%20more/{n}" for s in ("s3", "gs")
                      for n in ("manifest.json", "train-000000.tar")]
