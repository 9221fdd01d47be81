"""psp.io.fetch: manifest, resumable verified downloads from a local HTTP server, the offline check."""
import hashlib
import io
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from psp.cli.fetch import main as fetch_main
from psp.io import fetch as F

NAME = "tiny-generator.pt"


def _weights_bytes(shape=(8, 8), pad=40_000) -> bytes:
    """A small rosinality-like checkpoint (~160 kB, so transfers can be cut mid-way)."""
    buffer = io.BytesIO()
    torch.save({"g_ema": {"style.1.weight": torch.randn(*shape), "pad": torch.randn(pad)},
                "latent_avg": torch.randn(shape[0])}, buffer)
    return buffer.getvalue()


class _Server:
    """HTTP on 127.0.0.1 serving in-memory files, with Range requests and injected failures.

    `files`: request path (with query) -> (body, content type). `drops`: path -> byte counts; each
    request to the path pops one and sends only that many bytes before closing the connection.
    `requests`: (path, Range header) of every request.
    """

    def __init__(self):
        self.files, self.drops, self.requests = {}, {}, []
        self.ignore_range = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                if self.path not in server.files:
                    self.send_error(404)
                    return
                data, content_type = server.files[self.path]
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and not server.ignore_range:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                drops = server.drops.get(self.path)
                if drops:
                    self.wfile.write(body[:drops.pop(0)])
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def add(self, path: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        self.files[path] = (data, content_type)
        return self.url(path)


@pytest.fixture
def server():
    srv = _Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def _manifest(tmp_path: Path, url: str, data: bytes = None, **overrides) -> Path:
    """A manifest with one entry NAME describing `data` (sha256 of `data` when given)."""
    entry = {"name": NAME, "url": url, "approx_size": "160 kB",
             "sha256": hashlib.sha256(data).hexdigest() if data is not None else None,
             "structure": {"keys": ["g_ema", "latent_avg"], "tensors": {"g_ema/style.1.weight": [8, 8]}}}
    entry.update(overrides)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"schema_version": 1, "files": [entry]}))
    return path


def _fetch(tmp_path, manifest, **kwargs):
    kwargs.setdefault("retries", 0)
    return F.fetch(NAME, tmp_path / "weights", manifest=manifest, progress=False, timeout=10, **kwargs)


# ----------------------------------------------------------------------------------------------
# Downloads


def test_full_download(tmp_path, server):
    data = _weights_bytes()
    manifest = _manifest(tmp_path, server.add("/w.pt", data), data)
    path = _fetch(tmp_path, manifest)
    assert path == tmp_path / "weights" / NAME
    assert path.read_bytes() == data
    assert sorted(p.name for p in path.parent.iterdir()) == [NAME]  # no .part left
    assert server.requests == [("/w.pt", None)]


def test_interrupted_transfer_keeps_part_then_resumes(tmp_path, server):
    data = _weights_bytes()
    manifest = _manifest(tmp_path, server.add("/w.pt", data), data)
    server.drops["/w.pt"] = [50_000]
    with pytest.raises(F.DownloadError, match=r"50000 bytes kept in .*tiny-generator\.pt\.part: run the same"):
        _fetch(tmp_path, manifest)
    final = tmp_path / "weights" / NAME
    assert not final.exists()
    assert final.with_name(NAME + ".part").stat().st_size == 50_000

    path = _fetch(tmp_path, manifest)
    assert server.requests[-1] == ("/w.pt", "bytes=50000-")
    assert path.read_bytes() == data
    assert not final.with_name(NAME + ".part").exists()


def test_retries_resume_within_one_call(tmp_path, server):
    data = _weights_bytes()
    manifest = _manifest(tmp_path, server.add("/w.pt", data), data)
    server.drops["/w.pt"] = [30_000, 40_000]
    path = _fetch(tmp_path, manifest, retries=2)
    assert path.read_bytes() == data
    assert [r for _, r in server.requests] == [None, "bytes=30000-", "bytes=70000-"]


def test_server_ignoring_range_restarts_from_zero(tmp_path, server):
    data = _weights_bytes()
    manifest = _manifest(tmp_path, server.add("/w.pt", data), data)
    part = tmp_path / "weights" / f"{NAME}.part"
    part.parent.mkdir()
    part.write_bytes(b"x" * 1000)  # would corrupt the file if the 200 answer were appended
    server.ignore_range = True
    assert _fetch(tmp_path, manifest).read_bytes() == data


def test_complete_part_file_is_verified_not_downloaded_again(tmp_path, server):
    data = _weights_bytes()
    manifest = _manifest(tmp_path, server.add("/w.pt", data), data)
    part = tmp_path / "weights" / f"{NAME}.part"
    part.parent.mkdir()
    part.write_bytes(data)  # a previous run finished the transfer but not the rename
    assert _fetch(tmp_path, manifest).read_bytes() == data
    assert server.requests == [("/w.pt", f"bytes={len(data)}-")]  # answered 416


def test_present_file_is_verified_and_not_downloaded(tmp_path, server):
    data = _weights_bytes()
    manifest = _manifest(tmp_path, server.add("/w.pt", data), data)
    dest = tmp_path / "weights" / NAME
    dest.parent.mkdir()
    dest.write_bytes(data)
    assert _fetch(tmp_path, manifest) == dest
    assert server.requests == []

    dest.write_bytes(b"garbage")
    with pytest.raises(F.VerificationError, match=r"exists but fails verification: sha256 .*delete it"):
        _fetch(tmp_path, manifest)
    assert dest.read_bytes() == b"garbage"  # a user's file is never deleted


def test_symlinked_destination_downloads_into_the_link_target(tmp_path, server):
    # The Docker image links /app/checkpoints/NAME to the mounted /checkpoints/NAME.
    data = _weights_bytes()
    manifest = _manifest(tmp_path, server.add("/w.pt", data), data)
    mount = tmp_path / "mount"
    mount.mkdir()
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / NAME).symlink_to(mount / NAME)
    _fetch(tmp_path, manifest)
    assert (mount / NAME).read_bytes() == data
    assert (tmp_path / "weights" / NAME).is_symlink()


def test_google_drive_confirmation_page_is_followed(tmp_path, server):
    data = _weights_bytes()
    server.add("/download?id=ABC&export=download&confirm=t&uuid=u-1", data)
    page = ('<html><body><p>Google Drive can\'t scan this file for viruses.</p>'
            '<form id="download-form" action="/download" method="get">'
            '<input type="submit" id="uc-download-link" value="Download anyway"/>'
            '<input type="hidden" name="id" value="ABC"><input type="hidden" name="export" value="download">'
            '<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="u-1">'
            '</form></body></html>').encode()
    manifest = _manifest(tmp_path, server.add("/uc?export=download&id=ABC", page, "text/html; charset=utf-8"),
                         data)
    assert _fetch(tmp_path, manifest).read_bytes() == data


def test_web_page_instead_of_the_file_is_an_error(tmp_path, server):
    page = b"<html><body>Too many users have viewed or downloaded this file recently.</body></html>"
    manifest = _manifest(tmp_path, server.add("/uc?id=Q", page, "text/html"))
    with pytest.raises(F.DownloadError, match=r"web page instead of tiny-generator\.pt .*browser"):
        _fetch(tmp_path, manifest)
    assert list((tmp_path / "weights").iterdir()) == []


def test_http_error_is_reported(tmp_path, server):
    manifest = _manifest(tmp_path, server.url("/missing.pt"))
    with pytest.raises(F.DownloadError, match=r"HTTP 404 .*/missing\.pt"):
        _fetch(tmp_path, manifest)
    assert not (tmp_path / "weights" / NAME).exists()


def test_drive_share_links_become_download_urls():
    expected = "https://drive.google.com/uc?export=download&id=1bMT-x_9"
    for url in ("https://drive.google.com/file/d/1bMT-x_9/view?usp=sharing",
                "https://drive.google.com/open?id=1bMT-x_9", "https://drive.google.com/uc?id=1bMT-x_9"):
        assert F.drive_download_url(url) == expected
    other = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
    assert F.drive_download_url(other) == other


# ----------------------------------------------------------------------------------------------
# Verification: a bad download never becomes the final file


def _assert_nothing_left(tmp_path):
    assert [p.name for p in (tmp_path / "weights").iterdir()] == []


def test_wrong_sha256_is_rejected_and_deleted(tmp_path, server):
    data = _weights_bytes()
    manifest = _manifest(tmp_path, server.add("/w.pt", data), _weights_bytes())
    with pytest.raises(F.VerificationError, match=r"fails verification: sha256 [0-9a-f]{64} does not match"):
        _fetch(tmp_path, manifest)
    _assert_nothing_left(tmp_path)


def test_wrong_size_is_rejected(tmp_path, server):
    data = _weights_bytes()
    manifest = _manifest(tmp_path, server.add("/w.pt", data), size_bytes=len(data) + 1)
    with pytest.raises(F.VerificationError, match=rf"size {len(data)} bytes, the manifest says {len(data) + 1}"):
        _fetch(tmp_path, manifest)
    _assert_nothing_left(tmp_path)


def test_unloadable_file_is_rejected(tmp_path, server):
    manifest = _manifest(tmp_path, server.add("/w.pt", b"\x00not a checkpoint" * 100))
    with pytest.raises(F.VerificationError, match="cannot be loaded safely"):
        _fetch(tmp_path, manifest)
    _assert_nothing_left(tmp_path)


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


def test_file_that_needs_code_to_load_is_rejected(tmp_path, server):
    buffer = io.BytesIO()
    torch.save({"g_ema": {}, "latent_avg": _RunsCode()}, buffer)
    manifest = _manifest(tmp_path, server.add("/w.pt", buffer.getvalue()))
    with pytest.raises(F.VerificationError, match="cannot be loaded safely"):
        _fetch(tmp_path, manifest)
    _assert_nothing_left(tmp_path)


def test_wrong_structure_is_rejected(tmp_path, server):
    data = _weights_bytes(shape=(4, 4))
    manifest = _manifest(tmp_path, server.add("/w.pt", data))
    with pytest.raises(F.VerificationError, match=r"'g_ema/style\.1\.weight' has shape \[4, 4\], expected \[8, 8\]"):
        _fetch(tmp_path, manifest)
    _assert_nothing_left(tmp_path)


def test_unverified_expectation_only_warns(tmp_path, server):
    data = _weights_bytes()
    structure = {"keys": ["g_ema"], "unverified_tensors": {"g_ema/style.1.weight": [3, 3]}}
    manifest = _manifest(tmp_path, server.add("/w.pt", data), structure=structure)
    with pytest.warns(UserWarning, match=r"has shape \[8, 8\], expected \[3, 3\] \(an unverified expectation"):
        path = _fetch(tmp_path, manifest)
    assert path.read_bytes() == data


# ----------------------------------------------------------------------------------------------
# Offline: require_weights never downloads and says what to do


def test_require_weights_missing_official_file(tmp_path):
    with pytest.raises(F.MissingWeightsError) as info:
        F.require_weights("model_ir_se50.pth", tmp_path / "ckpt")
    message = str(info.value)
    assert message == (f"missing weights file 'model_ir_se50.pth': expected at {tmp_path}/ckpt/model_ir_se50.pth; "
                       f"fetch it with: psp fetch model_ir_se50.pth --dir {tmp_path}/ckpt")
    assert isinstance(info.value, FileNotFoundError)


def test_require_weights_mentions_partial_download(tmp_path):
    (tmp_path / "stylegan2-ffhq-config-f.pt.part").write_bytes(b"12")
    with pytest.raises(F.MissingWeightsError, match=r"--dir \S+ \(it resumes the partial download there\)$"):
        F.require_weights(tmp_path / "stylegan2-ffhq-config-f.pt")


def test_require_weights_unknown_path(tmp_path):
    with pytest.raises(F.MissingWeightsError, match=r"^missing weights file 'mine\.pt': expected at .*/mine\.pt; "
                                                    r"it is not an official file"):
        F.require_weights(tmp_path / "mine.pt")


def test_require_weights_follows_links_and_env_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(F.WEIGHTS_DIR_ENV, str(tmp_path / "app"))
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "model_ir_se50.pth").symlink_to(tmp_path / "mount" / "model_ir_se50.pth")
    with pytest.raises(F.MissingWeightsError) as info:
        F.require_weights("model_ir_se50.pth")
    assert f"(-> {tmp_path}/mount/model_ir_se50.pth)" in str(info.value)
    assert str(info.value).endswith(f"--dir {tmp_path}/mount")
    (tmp_path / "mount").mkdir()
    (tmp_path / "mount" / "model_ir_se50.pth").write_bytes(b"w")
    assert F.require_weights("model_ir_se50.pth") == tmp_path / "app" / "model_ir_se50.pth"


# ----------------------------------------------------------------------------------------------
# The manifest


OFFICIAL = {"stylegan2-ffhq-config-f.pt", "psp_ffhq_encode.pt", "psp_ffhq_frontalization.pt",
            "psp_celebs_sketch_to_face.pt", "psp_celebs_seg_to_face.pt", "psp_celebs_super_resolution.pt",
            "psp_ffhq_toonify.pt", "model_ir_se50.pth", "alexnet-owt-7be5be79.pth"}


def _is_shape(shape) -> bool:
    return isinstance(shape, list) and all(isinstance(n, int) and n > 0 for n in shape)


def test_manifest_schema():
    raw = json.loads(F.MANIFEST_PATH.read_text())
    assert {e["name"] for e in raw["files"]} == OFFICIAL
    for item in raw["files"]:
        name = item["name"]
        assert {"name", "url", "source", "description", "approx_size", "sha256", "structure",
                "unverified"} <= item.keys(), name
        assert item["url"].startswith("https://"), name
        structure = item["structure"]
        assert structure["tensors"], name
        for spec, shape in {**structure["tensors"], **structure.get("unverified_tensors", {})}.items():
            assert _is_shape(shape), (name, spec)
        if item["sha256"] is None:
            assert any("sha256" in note for note in item["unverified"]), name
    entries = F.load_manifest()
    assert entries["stylegan2-ffhq-config-f.pt"].tensors["g_ema/style.1.weight"] == [512, 512]
    assert entries["psp_ffhq_encode.pt"].tensors["state_dict/encoder.input_layer.0.weight"] == [64, 3, 3, 3]
    assert entries["alexnet-owt-7be5be79.pth"].sha256.startswith("7be5be79")  # torchvision's name hash


def test_manifest_errors_name_the_entry(tmp_path):
    path = _manifest(tmp_path, "https://example.invalid/x", sha256="ABC")
    with pytest.raises(F.WeightsError, match=r"files\[0\]: sha256 must be 64 lowercase hex digits or null, got 'ABC'"):
        F.load_manifest(path)
    path.write_text(json.dumps({"files": [{"name": "x.pt", "url": "u"}]}))
    with pytest.raises(F.WeightsError, match=r"files\[0\] has no 'structure'"):
        F.load_manifest(path)


# ----------------------------------------------------------------------------------------------
# Command line


def test_cli_fetch_list_check(tmp_path, server, capsys):
    data = _weights_bytes()
    manifest = str(_manifest(tmp_path, server.add("/w.pt", data), data))
    folder = str(tmp_path / "weights")
    common = ["--dir", folder, "--manifest", manifest]

    assert fetch_main(["check", NAME, *common]) == 1
    assert fetch_main([NAME, *common, "--quiet"]) == 0  # `fetch` is the default command
    assert fetch_main(["list", *common]) == 0
    assert fetch_main(["check", *common]) == 0
    out = capsys.readouterr().out
    assert f"{NAME}: missing (psp fetch {NAME} --dir {folder})" in out
    assert f"{NAME}: ok ({folder}/{NAME})" in out
    assert re.search(rf"^{re.escape(NAME)} +160 kB  present", out, re.M)
    assert f"{NAME}: ok\n" in out

    Path(folder, NAME).write_bytes(b"broken")
    assert fetch_main(["check", *common]) == 1
    assert "FAILED: sha256" in capsys.readouterr().out


def test_cli_usage_errors(tmp_path, capsys):
    assert fetch_main(["fetch", "nope.pt", "--dir", str(tmp_path)]) == 2
    assert "error: unknown weights file 'nope.pt'; official files: stylegan2-ffhq-config-f.pt" in capsys.readouterr().err
    assert fetch_main(["a.pt", "b.pt", "--url", "http://127.0.0.1:9/x"]) == 2
    assert fetch_main(["list", "--names"]) == 0
    assert set(capsys.readouterr().out.split()) == OFFICIAL
    assert list(tmp_path.iterdir()) == []


def test_cli_url_for_an_unlisted_file_checks_loadability(tmp_path, server, capsys):
    data = _weights_bytes()
    url = server.add("/mine.pt", data)
    assert fetch_main(["fetch", "mine.pt", "--url", url, "--dir", str(tmp_path), "--quiet"]) == 0
    assert (tmp_path / "mine.pt").read_bytes() == data
    assert fetch_main(["fetch", "junk.pt", "--url", server.add("/junk", b"junk"), "--dir", str(tmp_path)]) == 1
    assert "junk.pt downloaded from" in capsys.readouterr().err
    assert not (tmp_path / "junk.pt").exists()
