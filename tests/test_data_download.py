"""Real-data preparation without internet: small archives in the real layouts (VTAB-1k NOAH zip, FGVC
official archives + VPT split jsons) served from an HTTP server on 127.0.0.1, through the library
(download, lock file, resume, safe extraction, checks, manifest) and through Snakemake (the real rules
download -> verify -> extract -> manifest -> train, and the failures a user meets)."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image
from torch.utils.data import TensorDataset

from vpeft.archives import ArchiveError
from vpeft.data.check import check_vtab_task
from vpeft.data.fgvc import check_task as check_fgvc_task
from vpeft.data.manifest import read_rows, write_task_index
from vpeft.data.prepare import PREPARED_RECORD, prepare_task_folder
from vpeft.data.splits import DataError
from vpeft.download import DownloadError, download, sha256_file, verify_file

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
VTAB_SIZES = {"train800": 8, "val200": 4, "test": 6}


# -- a file server on 127.0.0.1 with HTTP Range support, and ways to misbehave ---------------------
class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        srv = self.server
        name = self.path.split("?")[0].lstrip("/")
        srv.requests.append((name, self.headers.get("Range")))
        data = srv.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = 0
        header = self.headers.get("Range")
        if header and srv.honour_range:
            start = int(header.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.drop_after.get(name):  # send part of the body, then hang up (once)
            self.wfile.write(body[: srv.drop_after.pop(name)])
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.drop_after, srv.honour_range = {}, [], {}, True
    srv.url = lambda name: f"http://127.0.0.1:{srv.server_address[1]}/{name}"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


# -- data in the real layouts ----------------------------------------------------------------------
def _jpeg(label: int, rng, size: int = 32) -> bytes:
    pixels = np.clip(rng.normal(40 + 60 * label, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def vtab_task_files(num_classes: int = 3, sizes=VTAB_SIZES, seed: int = 0) -> dict[str, bytes]:
    """One task folder of NOAH's VTAB-1k layout, as {relative path: bytes}."""
    rng = np.random.default_rng(seed)
    files, lines = {}, {}
    for split, n in sizes.items():
        lines[split] = []
        for i in range(n):
            rel = f"images/{split}/{i:06d}.jpg"
            files[rel] = _jpeg(i % num_classes, rng)
            lines[split].append(f"{rel} {i % num_classes}")
    lines["train800val200"] = []
    for split in ("train800", "val200"):
        for line in lines[split]:
            rel, label = line.split()
            new = f"images/train800val200/{len(lines['train800val200']):06d}.jpg"
            files[new] = files[rel]
            lines["train800val200"].append(f"{new} {label}")
    for split, split_lines in lines.items():
        files[f"{split}.txt"] = ("\n".join(split_lines) + "\n").encode()
    return files


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def make_tgz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def prefixed(prefix: str, files: dict[str, bytes]) -> dict[str, bytes]:
    return {f"{prefix}/{k}": v for k, v in files.items()}


def fgvc_files(class_ids=(3, 7, 11), per_class=(3, 1, 2), seed: int = 1):
    """CUB-like data: images under <class folder>/ and VPT split jsons with non-contiguous class ids."""
    rng = np.random.default_rng(seed)
    images, splits = {}, {"train": {}, "val": {}, "test": {}}
    for label, cid in enumerate(class_ids):
        for split, n in zip(splits, per_class):
            for i in range(n):
                key = f"{cid:03d}.bird/{split}_{i}.jpg"
                images[key] = _jpeg(label, rng)
                splits[split][key] = cid
    jsons = {f"{split}.json": json.dumps(anno).encode() for split, anno in splits.items()}
    return images, jsons


# -- downloads: lock file, mismatch, resume --------------------------------------------------------
def test_first_download_records_sha256_and_later_ones_are_checked(tmp_path, server):
    server.files["a.bin"] = b"x" * 5000
    lock = tmp_path / "lock.json"
    out = download(server.url("a.bin"), tmp_path / "a.bin", lock=lock)
    entry = json.loads(lock.read_text())["files"][server.url("a.bin")]
    assert entry["sha256"] == sha256_file(out) and entry["size"] == 5000
    out.unlink()
    server.files["a.bin"] = b"y" * 5000  # the source changed upstream
    with pytest.raises(DownloadError, match=r"a\.bin.*does not match .*recorded in .*lock\.json") as err:
        download(server.url("a.bin"), tmp_path / "a.bin", lock=lock)
    assert "delete the entry" in str(err.value)
    assert not out.exists() and (tmp_path / "a.bin.rejected").read_bytes() == b"y" * 5000


def test_pinned_sha256_mismatch_is_refused_and_the_file_kept_aside(tmp_path, server):
    server.files["ViT-B_16.npz"] = b"corrupted bytes"
    with pytest.raises(DownloadError, match=r"ViT-B_16\.npz.*does not match the config's 0000") as err:
        download(server.url("ViT-B_16.npz"), tmp_path / "ViT-B_16.npz", sha256="0" * 64)
    assert "kept as" in str(err.value)
    assert not (tmp_path / "ViT-B_16.npz").exists()
    assert (tmp_path / "ViT-B_16.npz.rejected").read_bytes() == b"corrupted bytes"


def test_an_interrupted_download_resumes_with_a_range_request(tmp_path, server):
    data = bytes(range(256)) * 400
    server.files["big.zip"] = data
    (tmp_path / "big.zip.part").write_bytes(data[:30000])  # left by a killed job
    download(server.url("big.zip"), tmp_path / "big.zip", sha256=__import__("hashlib").sha256(data).hexdigest())
    assert (tmp_path / "big.zip").read_bytes() == data
    assert server.requests == [("big.zip", "bytes=30000-")]


def test_a_dropped_connection_is_resumed(tmp_path, server):
    data = bytes(range(256)) * 400
    server.files["big.zip"], server.drop_after["big.zip"] = data, 40000
    download(server.url("big.zip"), tmp_path / "big.zip", backoff=0)
    assert (tmp_path / "big.zip").read_bytes() == data
    assert server.requests == [("big.zip", None), ("big.zip", "bytes=40000-")]


def test_a_server_without_range_support_gets_a_fresh_start(tmp_path, server):
    data = b"0123456789" * 1000
    server.files["f.tar"], server.honour_range = data, False
    (tmp_path / "f.tar.part").write_bytes(b"garbage!" * 100)
    download(server.url("f.tar"), tmp_path / "f.tar")
    assert (tmp_path / "f.tar").read_bytes() == data


def test_unreachable_source_fails_at_once_and_says_what_to_do(tmp_path):
    with pytest.raises(DownloadError, match=r"could not download http://127\.0\.0\.1:9/x\.zip .*place it by hand"):
        download("http://127.0.0.1:9/x.zip", tmp_path / "x.zip", manual_hint="place it by hand")
    with pytest.raises(DownloadError, match="no URL in the config for nabirds.tar.gz. agree to the terms"):
        download(None, tmp_path / "nabirds.tar.gz", manual_hint="agree to the terms")


def test_a_file_placed_by_hand_is_recorded_then_checked(tmp_path):
    path = tmp_path / "nabirds.tar.gz"
    path.write_bytes(b"first")
    lock = tmp_path / "lock.json"
    digest = verify_file(path, url=None, sha256=None, lock=lock, what="archive")
    assert json.loads(lock.read_text())["files"]["local:nabirds.tar.gz"]["sha256"] == digest
    assert verify_file(path, url=None, sha256=None, lock=lock, what="archive") == digest  # cached stamp
    path.write_bytes(b"other bytes")  # size and mtime change: hashed again
    with pytest.raises(DownloadError, match="refusing to extract it"):
        verify_file(path, url=None, sha256=None, lock=lock, what="archive")


# -- task folders from archives --------------------------------------------------------------------
def _prepare(tmp_path, archive_bytes: bytes, name="vtab-1k.zip", names=("cifar", "cifar100"), sha256=None,
             pieces=None):
    archive = tmp_path / name
    archive.write_bytes(archive_bytes)
    pieces = pieces or [{"from": ["vtab-1k/{name}", "{name}"]}]
    pieces = [dict(p, archive=str(archive), url=None, sha256=sha256) for p in pieces]
    return prepare_task_folder(tmp_path / "vtab-1k" / "cifar", pieces, list(names), lock=tmp_path / "lock.json",
                               what="task 'cifar'")


def test_task_folder_from_a_zip_with_the_other_folder_name(tmp_path):
    files = vtab_task_files()
    record = _prepare(tmp_path, make_zip(prefixed("vtab-1k/cifar100", files) | prefixed("vtab-1k/dtd", files)))
    target = tmp_path / "vtab-1k" / "cifar"
    assert record["pieces"][0]["from"] == "vtab-1k/cifar100" and record["pieces"][0]["files"] == len(files)
    assert (target / "train800val200.txt").read_bytes() == files["train800val200.txt"]
    assert (target / PREPARED_RECORD).is_file() and not (target / "dtd").exists()


def test_traversal_member_is_refused_and_no_folder_is_left(tmp_path):
    members = prefixed("vtab-1k/cifar", vtab_task_files()) | {"vtab-1k/cifar/../../../evil.txt": b"x"}
    with pytest.raises(ArchiveError, match=r"vtab-1k\.zip: member 'vtab-1k/cifar/\.\./\.\./\.\./evil\.txt' would be"):
        _prepare(tmp_path, make_zip(members))
    assert not (tmp_path / "vtab-1k" / "cifar").exists() and not list(tmp_path.rglob("evil.txt"))
    assert not [p for p in (tmp_path / "vtab-1k").iterdir()]  # no staging folder left behind


def test_archive_that_differs_from_its_pinned_sha256_is_not_extracted(tmp_path):
    with pytest.raises(DownloadError, match=r"vtab-1k\.zip: sha256 .* does not match the config's"):
        _prepare(tmp_path, make_zip(prefixed("vtab-1k/cifar", vtab_task_files())), sha256="f" * 64)
    assert not (tmp_path / "vtab-1k").exists()


def test_damaged_archive_is_named_and_leaves_nothing(tmp_path):
    data = make_tgz(prefixed("vtab-1k/cifar", vtab_task_files()))
    with pytest.raises(ArchiveError, match=r"cifar\.tgz"):
        _prepare(tmp_path, data[: len(data) // 2], name="cifar.tgz")
    assert not (tmp_path / "vtab-1k" / "cifar").exists()


def test_archive_without_the_task_lists_what_it_has(tmp_path):
    with pytest.raises(ArchiveError, match=r"none of the folders .*its top-level entries: other"):
        _prepare(tmp_path, make_zip(prefixed("other/dtd", vtab_task_files())))


# -- checks, manifest, training input --------------------------------------------------------------
def _run(index, protocol=None, layout="vtab"):
    protocol = protocol or {"name": "vtab1k", "train_split": "train800val200", "eval_split": "test",
                            "augmentation": "none"}
    return SimpleNamespace(task="t", task_dir="/nonexistent", num_classes=3, protocol=protocol,
                           data={"index": str(index)}, layout=layout)


def _spec(size=32):
    return SimpleNamespace(input_size=size, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear")


def test_training_reads_the_checked_manifest_and_notices_changed_images(tmp_path):
    from vpeft.data import vtab

    write_files(tmp_path / "root" / "cifar100", vtab_task_files())
    index, rows = check_vtab_task(tmp_path / "root" / "cifar", 3, suite="vtab", task="cifar", folders=["cifar100"],
                                  sizes={"train800": 8, "val200": 4, "train800val200": 12, "test": 6})
    assert index["task_dir"].endswith("cifar100") and len(rows) == 8 + 4 + 12 + 6
    write_task_index(tmp_path / "index" / "cifar.json", index, rows)
    task_dir, test_rows = read_rows(tmp_path / "index" / "cifar.json", ["test"])
    assert [r.label for r in test_rows] == [0, 1, 2, 0, 1, 2]

    tc = SimpleNamespace(train_aug=True)  # the vtab1k protocol switches augmentation off anyway
    train = vtab.train_dataset(_run(tmp_path / "index" / "cifar.json"), _spec(), tc)
    assert len(train) == 12 and train[5][1] == 2 and train[0][0].shape == (3, 32, 32)
    assert isinstance(train, TensorDataset)  # decoded once: no random augmentation under vtab1k
    vpetl = dict(_run(tmp_path / "index" / "cifar.json").protocol, name="vpetl", augmentation="vpetl")
    augmented = vtab.train_dataset(_run(tmp_path / "index" / "cifar.json", vpetl), _spec(), tc)
    assert not isinstance(augmented, TensorDataset) and len(augmented) == 12  # flip + RandAugment per epoch
    evaluation = vtab.eval_dataset(_run(tmp_path / "index" / "cifar.json"), _spec(), tc)
    (task_dir / test_rows[3].path).write_bytes(_jpeg(2, np.random.default_rng(9)))  # changed after the check
    with pytest.raises(DataError, match=r"images/test/000003\.jpg changed since the data check"):
        evaluation[3]


@pytest.mark.parametrize("damage, message", [
    ("truncate", r"cannot decode image .*images/test/000002\.jpg"),
    ("resize", r"test\.txt lists 5 images, expected 6 \(set by suites\.vtab\.tasks\.dtd\.sizes\.test\)"),
    ("label", r"test\.txt:1: label 7 outside \[0, 3\)"),
])
def test_check_names_the_file_at_fault(tmp_path, damage, message):
    task = write_files(tmp_path / "dtd", vtab_task_files())
    if damage == "truncate":
        data = (task / "images/test/000002.jpg").read_bytes()
        (task / "images/test/000002.jpg").write_bytes(data[: len(data) // 3])
    elif damage == "resize":
        (task / "test.txt").write_text("".join((task / "test.txt").read_text().splitlines(True)[:5]))
    else:
        (task / "test.txt").write_text((task / "test.txt").read_text().replace(" 0\n", " 7\n", 1))
    with pytest.raises(DataError, match=message):
        check_vtab_task(task, 3, suite="vtab", task="dtd", sizes={"test": 6})


def test_fgvc_check_maps_class_ids_and_its_datasets_follow_the_protocol(tmp_path):
    from vpeft.data import fgvc

    images, jsons = fgvc_files()
    task = write_files(tmp_path / "CUB_200_2011", prefixed("images", images) | jsons)
    index, rows = check_fgvc_task(tmp_path / "cub", 3, suite="fgvc", task="cub", folders=["CUB_200_2011"],
                                  image_dir="images")
    assert index["class_ids"] == {"3": 0, "7": 1, "11": 2} and index["splits"]["test"]["count"] == 6
    assert {r.path.split("/")[0] for r in rows} == {"images"}
    write_task_index(tmp_path / "cub.json", index, rows)
    tc = SimpleNamespace(train_aug=False)
    vpetl = {"name": "vpetl", "train_split": "train800val200", "eval_split": "test", "augmentation": "vpetl",
             "layouts": {"fgvc": {"train_split": "train800"}}}
    assert len(fgvc.train_dataset(_run(tmp_path / "cub.json", vpetl, "fgvc"), _spec(), tc)) == 9  # train.json only
    run = _run(tmp_path / "cub.json", layout="fgvc")
    train = fgvc.train_dataset(run, _spec(24), tc)  # vtab1k: train + val, decoded once
    assert len(train) == 12 and train[0][0].shape == (3, 24, 24)
    assert sorted(label for _, label in fgvc.eval_dataset(run, _spec(24), tc)) == [0, 0, 1, 1, 2, 2]
    assert task.is_dir()


@pytest.mark.parametrize("change, message", [
    (lambda j: j["test"].update({next(iter(j["train"])): 3}), r"train\.json and .*test\.json share 1 image"),
    (lambda j: j["test"].update({"999.x/a.jpg": 99}), r"hold 4 class ids, but the config says num_classes: 3"),
    (lambda j: j["train"].update({next(iter(j["train"])): "3"}), r"train\.json: class id of .* is '3', not an integer"),
    (lambda j: [j["train"].pop(k) for k in [k for k, v in j["train"].items() if v == 11]],
     r"train\.json: class ids \[11\] have no training image"),
])
def test_fgvc_check_refuses_inconsistent_splits(tmp_path, change, message):
    images, jsons = fgvc_files()
    annotations = {k.removesuffix(".json"): json.loads(v) for k, v in jsons.items()}
    change(annotations)
    write_files(tmp_path / "cub", prefixed("images", images)
                | {f"{k}.json": json.dumps(v).encode() for k, v in annotations.items()})
    with pytest.raises(DataError, match=message):
        check_fgvc_task(tmp_path / "cub", 3, suite="fgvc", task="cub", image_dir="images")


# -- the real rules through Snakemake --------------------------------------------------------------
def workflow_config(tmp_path: Path, server, *, vtab_source="download", extra_suites=None) -> Path:
    """The shipped config with small VTAB-layout tasks served from 127.0.0.1 (2 tasks, demo backbone)."""
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    config["download_lock"] = str(tmp_path / "downloads.lock.json")
    config["backbones"]["vit-demo"]["checkpoint"] = str(ROOT / config["backbones"]["vit-demo"]["checkpoint"])
    vtab = config["suites"]["vtab"]
    vtab["backbone"], vtab["methods"], vtab["source"] = "vit-demo", ["linear"], vtab_source
    vtab["root"] = str(tmp_path / "data" / "vtab-1k")
    vtab["download"]["archives"]["vtab-1k.zip"]["url"] = server.url("vtab-1k.zip")
    vtab["sizes"] = {"train800": 8, "val200": 4, "train800val200": 12}
    vtab["tasks"] = {t: dict(vtab["tasks"][t], num_classes=3, sizes={"test": 6}) for t in ("cifar", "dtd")}
    vtab["training"] = {"epochs": 1, "warmup_epochs": 0, "batch_size": 4, "drop_path": 0.0}
    config["suites"].update(extra_suites or {})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(tmp_path, config, *args, check=True):
    cmd = [*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(config), "--cores", "2", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-4000:]}")
    return result


def logs_text(tmp_path) -> str:
    return "".join(p.read_text() for p in (tmp_path / "logs").rglob("*.log"))


def own_log(tmp_path, stage: str, name: str) -> str:
    """The log of the one data job (stage: download, prepare, check) that handled task or archive `name`."""
    [log] = [p for p in (tmp_path / "logs/data" / stage).rglob(f"{name}.log")]
    return log.read_text()


@pytest.mark.slow
def test_vtab_download_extract_check_train_through_snakemake(tmp_path, server):
    files = vtab_task_files()
    server.files["vtab-1k.zip"] = make_zip(prefixed("vtab-1k/cifar100", files) | prefixed("vtab-1k/dtd", files))
    config = workflow_config(tmp_path, server)
    snakemake(tmp_path, config, "results/vtab/linear/")
    run = json.loads((tmp_path / "results/vtab/linear/cifar/seed-42/metrics.json").read_text())
    assert run["status"] == "ok" and run["eval"]["num_images"] == 6
    lock = json.loads((tmp_path / "downloads.lock.json").read_text())["files"]
    assert lock[server.url("vtab-1k.zip")]["sha256"] == sha256_file(tmp_path / "resources/downloads/vtab/vtab-1k.zip")
    index = json.loads((tmp_path / "resources/index/vtab/cifar.json").read_text())
    assert index["task_dir"] == str(tmp_path / "data/vtab-1k/cifar") and index["splits"]["test"]["count"] == 6
    assert (tmp_path / "resources/index/vtab/cifar.manifest.csv").read_text().startswith("split,path,label,sha256\n")
    assert server.requests == [("vtab-1k.zip", None)]  # one archive, downloaded once for both tasks


@pytest.mark.slow
def test_vtab_from_an_existing_folder_runs_to_completion(tmp_path, server):
    # (a copy that names the folder cifar100 is accepted by the check, see
    # test_training_reads_the_checked_manifest...; training follows it once runs carry data.index)
    for task in ("cifar", "dtd"):
        write_files(tmp_path / "data" / "vtab-1k" / task, vtab_task_files(seed=len(task)))
    config = workflow_config(tmp_path, server, vtab_source="external")
    snakemake(tmp_path, config, "results/vtab/linear/")
    summary = json.loads((tmp_path / "results/vtab/linear/summary.json").read_text())
    assert set(summary["tasks"]) == {"cifar", "dtd"}
    assert not server.requests and not (tmp_path / "resources/downloads").exists()


@pytest.mark.slow
def test_fgvc_official_archives_and_split_jsons_become_checked_manifests(tmp_path, server):
    images, jsons = fgvc_files()
    server.files["CUB_200_2011.tgz"] = make_tgz(prefixed("CUB_200_2011/images", images)
                                                | {"CUB_200_2011/README": b"readme"})
    server.files["json.zip"] = make_zip(prefixed("json/CUB_200_2011", jsons) | prefixed("json/nabirds", jsons))
    config = yaml.safe_load(workflow_config(tmp_path, server).read_text())
    fgvc = config["suites"]["fgvc"]
    fgvc["root"] = str(tmp_path / "data" / "fgvc")
    for name in fgvc["download"]["archives"]:
        fgvc["download"]["archives"][name].update(url=server.url(name), sha256=None)
    # the shipped sizes pin VPT's published split; this copy is a tiny one, checked at its own sizes
    fgvc["tasks"] = {"cub": dict(fgvc["tasks"]["cub"], num_classes=3, sizes={"train": 9, "val": 3, "test": 6})}
    path = tmp_path / "fgvc.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake(tmp_path, path, "resources/index/fgvc/cub.json")
    index = json.loads((tmp_path / "resources/index/fgvc/cub.json").read_text())
    assert index["layout"] == "fgvc" and index["task_dir"] == str(tmp_path / "data/fgvc/cub")
    assert index["splits"]["train"]["count"] == 9 and index["manifest"]["rows"] == 18
    assert sorted(p.name for p in (tmp_path / "data/fgvc/cub").iterdir() if p.name != ".snakemake_timestamp") == [
        PREPARED_RECORD, "images", "test.json", "train.json", "val.json"]
    assert {name for name, _ in server.requests} == {"CUB_200_2011.tgz", "json.zip"}


@pytest.mark.slow
def test_bad_inputs_fail_naming_the_file_and_the_other_outputs_stay(tmp_path, server):
    """Per-task archives: one good, one that differs from its pinned sha256, one damaged, one with a
    path-traversal member, one with a truncated image. --keep-going: the good task's index is written,
    every other job fails with a message that names the file, and nothing half-made is left."""
    files = vtab_task_files()
    truncated = dict(files)
    truncated["images/test/000001.jpg"] = files["images/test/000001.jpg"][:200]
    damaged = make_tgz(prefixed("good", files))
    archives = {
        "good.zip": make_zip(prefixed("good", files)),
        "badsum.zip": make_zip(prefixed("good", files)),
        "damaged.tgz": damaged[: len(damaged) // 2],
        "escape.zip": make_zip(prefixed("good", files) | {"good/../../../../escape.txt": b"x"}),
        "truncated.zip": make_zip(prefixed("good", truncated)),
    }
    server.files.update(archives)
    tasks = {name.split(".")[0]: name for name in archives}
    suite = {
        "title": "bad archives", "kind": "image", "layout": "vtab", "source": "download",
        "root": str(tmp_path / "data" / "bad"), "backbone": "vit-demo", "protocol": "vtab1k", "methods": ["linear"],
        "download": {"archives": {a: {"url": server.url(a), "sha256": "0" * 64 if a == "badsum.zip" else None}
                                  for a in archives}},
        "sizes": {"train800": 8, "val200": 4, "train800val200": 12, "test": 6},
        "tasks": {t: {"num_classes": 3, "download": [{"archive": a, "from": "good"}]} for t, a in tasks.items()},
    }
    config = workflow_config(tmp_path, server, extra_suites={"bad": suite})
    targets = [f"resources/index/bad/{t}.json" for t in tasks]
    result = snakemake(tmp_path, config, "--keep-going", *targets, check=False)
    assert result.returncode != 0
    assert (tmp_path / "resources/index/bad/good.json").is_file()
    # each message in the log of the job that failed on it, not somewhere in all the logs
    assert "badsum.zip: sha256" in own_log(tmp_path, "download", "badsum.zip")
    assert "does not match the config's 0000" in own_log(tmp_path, "download", "badsum.zip")
    assert (tmp_path / "resources/downloads/bad/badsum.zip.rejected").is_file()
    assert re.search(r"damaged\.tgz: cannot (read|extract) \(", own_log(tmp_path, "prepare", "damaged"))
    assert "escape.zip: member 'good/../../../../escape.txt' would be written outside" in own_log(
        tmp_path, "prepare", "escape")
    assert not list(tmp_path.rglob("escape.txt"))
    assert re.search(r"cannot decode image \S*truncated/images/test/000001\.jpg",
                     own_log(tmp_path, "check", "truncated"))
    assert "cannot" not in own_log(tmp_path, "prepare", "good") + own_log(tmp_path, "check", "good")
    for task in ("badsum", "damaged", "escape", "truncated"):
        assert not (tmp_path / f"resources/index/bad/{task}.json").exists()
    for task in ("damaged", "escape"):
        assert not (tmp_path / "data" / "bad" / task).exists()
    assert not [p for p in (tmp_path / "data" / "bad").iterdir() if p.name.startswith(".")]
    shutil.rmtree(tmp_path / "data")


def test_fgvc_check_refuses_a_duplicated_entry_and_a_training_image_copied_into_test(tmp_path):
    images, jsons = fgvc_files()
    train_key, test_key = next(iter(json.loads(jsons["train.json"]))), next(iter(json.loads(jsons["test.json"])))
    copied = {**images, test_key: images[train_key]}  # the same picture under a test name
    write_files(tmp_path / "copy", prefixed("images", copied) | jsons)
    with pytest.raises(DataError, match=rf"test\.json(:\d+)?: image {test_key} has the same content .* as "
                                        rf"{train_key} of the training split .*train\.json"):
        check_fgvc_task(tmp_path / "copy", 3, suite="fgvc", task="cub", image_dir="images")

    text = jsons["val.json"].decode()
    first = text[1:text.index(",")]  # '"<key>": <id>'
    write_files(tmp_path / "dup", prefixed("images", images) | jsons | {"val.json": ("{" + first + ", " + text[1:]).encode()})
    with pytest.raises(DataError, match=r"val\.json: image .* is listed twice"):
        check_fgvc_task(tmp_path / "dup", 3, suite="fgvc", task="cub", image_dir="images")
