"""Memory ingest from img2dataset's formats, on real photos, with every bad-input case counted."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import lance
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import encode_image, real_image_files
from vimi.errors import VimiError
from vimi.io.ingest import expand_sources, unsafe_member_reason
from vimi.memory.img2dataset import ingest_memory


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def photos():
    files = real_image_files()
    return {
        "astronaut": encode_image(files["astronaut"], "JPEG"),
        "coffee": encode_image(files["coffee"], "PNG"),
        "chelsea": encode_image(files["chelsea"], "WEBP"),
        "china": encode_image(files["china"], "JPEG"),
        "grace_hopper": (files["grace_hopper"].read_bytes(), (512, 600)),  # the original JPEG file
        "flower": encode_image(files["flower"], "JPEG"),
    }


@pytest.fixture
def shards(tmp_path, photos) -> Path:
    """Two img2dataset-style shards: 5 good samples and 8 bad ones (see EXPECTED)."""
    folder = tmp_path / "shards"
    folder.mkdir()
    with tarfile.open(folder / "00000.tar", "w") as tar:
        add(tar, "000000.jpg", photos["astronaut"][0])
        add(tar, "000000.txt", b"an astronaut in a white suit with the american flag")
        add(tar, "000000.json", json.dumps({"url": "https://example.org/a.jpg", "similarity": 0.31}).encode())
        add(tar, "000001.png", photos["coffee"][0])
        add(tar, "000001.txt", b"a cup of coffee on a saucer")
        add(tar, "000002.webp", photos["chelsea"][0])
        add(tar, "000002.txt", b"chelsea the cat")
        add(tar, "000003.jpg", photos["china"][0][:200] + b"\x00garbage" * 50)  # undecodable
        add(tar, "000003.txt", b"a broken photo")
        add(tar, "000004.jpg", photos["flower"][0])
        add(tar, "000004.txt", b"   \n\t ")  # empty caption
        add(tar, "000005.jpg", photos["flower"][0])  # no caption
        add(tar, "000006.txt", b"a caption whose image was lost")  # no image
        add(tar, "../evil.jpg", photos["flower"][0])  # climbs out
        add(tar, "/tmp/vimi-absolute-evil.txt", b"absolute")  # absolute
    with tarfile.open(folder / "00001.tar", "w") as tar:
        add(tar, "000007.jpg", photos["grace_hopper"][0])
        add(tar, "000007.txt", "grace hopper, computer scientist — naval officer".encode())
        add(tar, "000000.jpg", photos["astronaut"][0])  # duplicate id
        add(tar, "000000.txt", b"the astronaut again")
        link = tarfile.TarInfo("000008.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"  # link member
        tar.addfile(link)
        add(tar, "000009.jpg", photos["china"][0])
        add(tar, "000009.txt", b"a chinese temple")
    return folder


EXPECTED = {
    "duplicate_id": 1,
    "empty_caption": 1,
    "missing_caption": 1,
    "missing_image": 1,
    "undecodable_image": 1,
    "unsafe_path": 3,
}


def ingest(settings, sources, fmt="webdataset", **options):
    uri = settings.path("memory")
    return ingest_memory(
        [str(s) for s in sources], fmt, uri, settings.path("quarantine"), settings.section("ingest"), **options
    )


def test_webdataset_ingest_counts_every_case(settings, shards, photos, tmp_path):
    report = ingest(settings, [shards / "{00000..00001}.tar"])
    assert report.ingested == 5
    assert report.quarantined == EXPECTED
    assert report.version == 1
    rows = {r["id"]: r for r in lance.dataset(str(settings.path("memory"))).to_table().to_pylist()}
    assert sorted(rows) == ["000000", "000001", "000002", "000007", "000009"]
    assert rows["000000"]["image"] == photos["astronaut"][0]  # stored as given, not re-encoded
    assert (rows["000000"]["width"], rows["000000"]["height"]) == photos["astronaut"][1]
    assert (rows["000007"]["width"], rows["000007"]["height"]) == (512, 600)
    assert rows["000007"]["caption"] == "grace hopper, computer scientist — naval officer"
    assert json.loads(rows["000000"]["meta"])["json"]["similarity"] == 0.31
    assert rows["000002"]["source"] == f"webdataset:{shards / '00000.tar'}"
    assert rows["000000"]["subject_id"] is None
    # Nothing was written outside: the archive is read in memory, never extracted.
    assert not (shards.parent / "evil.jpg").exists() and not Path("/tmp/vimi-absolute-evil.txt").exists()
    quarantine = lance.dataset(str(settings.path("quarantine"))).to_table().to_pylist()
    assert len(quarantine) == sum(EXPECTED.values())
    by_key = {(q["reason"], q["key"]) for q in quarantine}
    assert ("unsafe_path", "../evil.jpg") in by_key and ("unsafe_path", "/tmp/vimi-absolute-evil.txt") in by_key
    assert ("unsafe_path", "000008.jpg") in by_key and ("duplicate_id", "000000") in by_key
    assert ("undecodable_image", "000003") in by_key and ("missing_caption", "000005") in by_key
    assert all(q["dataset"] == str(settings.path("memory")) for q in quarantine)


def test_second_ingest_appends_a_version_and_refuses_duplicates(settings, shards):
    first = ingest(settings, [shards])
    quarantine = settings.path("quarantine")
    held = lance.dataset(str(quarantine)).count_rows()
    # the same shard again (a rerun): its rows are already in, not duplicates; its bad rows are counted
    # in the report but not quarantined twice
    again = ingest(settings, [shards / "00001.tar"])
    assert again.ingested == 0 and again.already_ingested == 2  # its third sample's id came from 00000.tar
    assert again.quarantined == {"duplicate_id": 1, "unsafe_path": 1}
    assert again.version == first.version  # nothing new to commit
    assert lance.dataset(str(quarantine)).count_rows() == held
    third = ingest(settings, [shards / "00001.tar"], id_prefix="b/")
    assert third.ingested == 3 and third.version == first.version + 1
    ds = lance.dataset(str(settings.path("memory")))
    assert ds.count_rows() == 8
    assert lance.dataset(str(settings.path("memory")), version=first.version).count_rows() == 5


_KILL_BEFORE_QUARANTINE = """
import os, signal, sys
from pathlib import Path
from vimi.config import Settings
from vimi.io import lance_io
from vimi.memory.img2dataset import ingest_memory

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

lance_io.write_quarantine = die  # killed between the data commit and the quarantine commit
settings = Settings.load()
ingest_memory([sys.argv[1]], "webdataset", settings.path("memory"), settings.path("quarantine"), settings.section("ingest"))
"""


def test_a_kill_between_the_data_and_quarantine_commits_is_repaired_by_a_rerun(settings, project, shards):
    proc = subprocess.run([sys.executable, "-c", _KILL_BEFORE_QUARANTINE, str(shards)], cwd=project)
    assert proc.returncode == -signal.SIGKILL
    assert lance.dataset(str(settings.path("memory"))).count_rows() == 5  # the data committed
    assert not settings.path("quarantine").exists()  # its quarantine rows were lost
    rerun = ingest(settings, [shards])
    assert (rerun.ingested, rerun.already_ingested) == (0, 5) and rerun.quarantined == EXPECTED
    reasons = lance.dataset(str(settings.path("quarantine"))).to_table().column("reason").to_pylist()
    assert {r: reasons.count(r) for r in set(reasons)} == EXPECTED  # every bad row once, none a duplicate
    again = ingest(settings, [shards])
    assert again.already_ingested == 5 and lance.dataset(str(settings.path("quarantine"))).count_rows() == len(reasons)


def test_sources_as_directory_glob_and_list(settings, shards):
    assert expand_sources([str(shards)], (".tar",)) == [shards / "00000.tar", shards / "00001.tar"]
    assert expand_sources([str(shards / "*.tar")], (".tar",)) == [shards / "00000.tar", shards / "00001.tar"]
    assert expand_sources([str(shards / "00001.tar"), str(shards / "0000{0,1}.tar")], (".tar",)) == [
        shards / "00001.tar",
        shards / "00000.tar",
    ]
    with pytest.raises(VimiError, match="does not exist"):
        expand_sources([str(shards / "nope.tar")], (".tar",))
    with pytest.raises(VimiError, match="matches no file"):
        expand_sources([str(shards / "*.parquet")], (".tar",))


@pytest.mark.parametrize(
    "name,unsafe",
    [
        ("000.jpg", False),
        ("a/b/000.jpg", False),
        ("../x.jpg", True),
        ("a/../../x.jpg", True),
        ("/etc/passwd", True),
        ("C:\\x.jpg", True),
        ("..", True),
        ("a/..b.jpg", False),
    ],
)
def test_unsafe_member_names(name, unsafe):
    assert (unsafe_member_reason(name) is not None) == unsafe


def test_truncated_shard_keeps_earlier_samples_and_counts(settings, shards, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    data = (shards / "00000.tar").read_bytes()
    (broken / "cut.tar").write_bytes(data[: len(data) // 2 + 100])
    report = ingest(settings, [broken])
    assert report.ingested >= 1
    assert report.quarantined.get("unreadable_shard", 0) >= 1
    not_a_tar = tmp_path / "junk"
    not_a_tar.mkdir()
    (not_a_tar / "x.tar").write_bytes(b"this is not a tar archive" * 40)
    report = ingest(settings, [not_a_tar])
    assert report.ingested == 0 and report.quarantined == {"unreadable_shard": 1}


def img2dataset_parquet(path: Path, photos, image_column="jpg", caption_column="caption") -> None:
    rows = [
        ("p0", photos["astronaut"][0], "an astronaut", "success", None),
        ("p1", photos["china"][0], "a temple in china", "success", None),
        ("p2", photos["grace_hopper"][0], "grace hopper", "success", None),
        ("p3", None, "never downloaded", "failed_to_download", "HTTP Error 404"),
        ("p4", photos["flower"][0], "", "success", None),
        ("p5", b"\xff\xd8\xff not really a jpeg", "corrupt bytes", "success", None),
    ]
    table = pa.table(
        {
            "key": [r[0] for r in rows],
            image_column: pa.array([r[1] for r in rows], pa.binary()),
            caption_column: [r[2] for r in rows],
            "url": [f"https://example.org/{r[0]}.jpg" for r in rows],
            "status": [r[3] for r in rows],
            "error_message": [r[4] for r in rows],
            "width": [64] * 6,
        }
    )
    pq.write_table(table, path)


def test_parquet_ingest(settings, photos, tmp_path):
    img2dataset_parquet(tmp_path / "part-00000.parquet", photos)
    report = ingest(settings, [tmp_path / "part-*.parquet"], fmt="parquet")
    assert report.ingested == 3
    assert report.quarantined == {"empty_caption": 1, "missing_image": 1, "undecodable_image": 1}
    rows = {r["id"]: r for r in lance.dataset(str(settings.path("memory"))).to_table().to_pylist()}
    assert set(rows) == {"p0", "p1", "p2"}
    assert rows["p2"]["image"] == photos["grace_hopper"][0]
    assert json.loads(rows["p1"]["meta"])["url"] == "https://example.org/p1.jpg"
    q = lance.dataset(str(settings.path("quarantine"))).to_table().to_pylist()
    assert any(r["key"] == "p3" and "404" in r["detail"] for r in q)


def test_parquet_custom_columns_and_clear_errors(settings, photos, tmp_path):
    img2dataset_parquet(tmp_path / "custom.parquet", photos, image_column="img_bytes", caption_column="text")
    with pytest.raises(VimiError, match=r"no image column .*no caption column 'caption'.*img_bytes"):
        ingest(settings, [tmp_path / "custom.parquet"], fmt="parquet")
    assert not settings.path("memory").exists()  # checked before anything was written
    report = ingest(
        settings, [tmp_path / "custom.parquet"], fmt="parquet", image_column="img_bytes", caption_column="text"
    )
    assert report.ingested == 3


def test_unknown_format(settings, shards):
    with pytest.raises(VimiError, match="Unknown memory format 'csv'"):
        ingest(settings, [shards], fmt="csv")


def test_cli_json_summary(project, shards):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vimi",
            "memory",
            "ingest",
            "--format",
            "webdataset",
            str(shards / "{00000..00001}.tar"),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == {"ingested": 5, "quarantined": EXPECTED, "version": 1}
    status = subprocess.run(
        [sys.executable, "-m", "vimi", "status", "--json"], capture_output=True, text=True, check=True
    )
    memory = json.loads(status.stdout)["datasets"]["memory"]
    assert (memory["rows"], memory["version"], memory["quarantined"]) == (5, 1, EXPECTED)
    assert json.loads(status.stdout)["datasets"]["videos"] is None
    human = subprocess.run(
        [
            sys.executable,
            "-m",
            "vimi",
            "memory",
            "ingest",
            "-f",
            "webdataset",
            str(shards),
            "--out",
            str(project / "other.lance"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Ingested 5 rows" in human.stdout and "unsafe_path: 3" in human.stdout
    assert lance.dataset(str(project / "other.lance")).count_rows() == 5


def test_a_second_ingest_of_the_same_dataset_refuses_naming_the_first(project, settings, shards):
    """Two ingests of the same dataset (or an ingest beside the pipeline's memory step) would both commit
    the same ids: the second refuses in one sentence naming the first, and writes nothing."""
    from vimi.locks import step_lock

    args = [sys.executable, "-m", "vimi", "memory", "ingest", "-f", "webdataset", str(shards)]
    with step_lock(settings.data_dir / ".locks", "memory"):  # the pipeline's memory step holds it
        out = subprocess.run(args, capture_output=True, text=True)
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert f"Another run of the memory step is in progress on these outputs (pid {os.getpid()}" in out.stderr
        assert not settings.path("memory").exists()
        other = subprocess.run([*args, "--out", str(project / "other.lance")], capture_output=True, text=True)
        assert other.returncode == 0, other.stderr  # another dataset: its own lock
    assert subprocess.run(args, capture_output=True, text=True).returncode == 0  # released: it runs
    videos = [sys.executable, "-m", "vimi", "videos", "ingest", "--csv", "x.csv", "--videos", "clips"]
    with step_lock(settings.data_dir / ".locks", "videos"):
        out = subprocess.run(videos, capture_output=True, text=True)
    assert out.returncode == 2 and "Another run of the videos step is in progress" in out.stderr


def test_cli_missing_source_is_one_clear_line(project):
    out = subprocess.run(
        [sys.executable, "-m", "vimi", "memory", "ingest", "--format", "webdataset", str(project / "missing.tar")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "does not exist" in out.stderr and "Traceback" not in out.stderr


def test_killed_ingest_leaves_the_previous_version_intact(settings, project, shards, tmp_path):
    """SIGKILL an ingest while it is blocked reading its last source: the dataset stays at its
    previous version, readable, with the same rows."""
    ingest(settings, [shards / "00000.tar"])
    before = lance.dataset(str(settings.path("memory")))
    version, rows = before.version, before.to_table().to_pylist()
    # Many good samples, then a FIFO no one writes to: the ingest blocks there, mid-way.
    big = tmp_path / "big"
    big.mkdir()
    photo = encode_image(real_image_files()["rocket"], "JPEG")[0]
    with tarfile.open(big / "00000.tar", "w") as tar:
        for i in range(600):
            add(tar, f"k{i:05d}.jpg", photo)
            add(tar, f"k{i:05d}.txt", f"a rocket, picture {i}".encode())
    fifo = big / "00001.tar"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vimi", "memory", "ingest", "-f", "webdataset", str(big)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    opened: list[int] = []
    # Opening the FIFO for writing returns once the ingest has opened it for reading, that is,
    # once the first shard has been read; we then hold it open and write nothing.
    opener = threading.Thread(target=lambda: opened.append(os.open(fifo, os.O_WRONLY)), daemon=True)
    opener.start()
    opener.join(timeout=120)
    try:
        assert opened, f"ingest never reached the FIFO: {proc.poll()}"
        assert proc.poll() is None
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        for fd in opened:
            os.close(fd)
    assert proc.returncode == -signal.SIGKILL
    after = lance.dataset(str(settings.path("memory")))
    assert after.version == version
    assert after.to_table().to_pylist() == rows


def test_oversized_members_deep_json_and_unused_members(settings, photos, tmp_path):
    """A member over ingest.max_member_bytes is quarantined unread; JSON nested past Python's stack is
    kept as a json_error in the row's meta, not a crash; members no sample uses (.cls, .mp3) are skipped."""
    small = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(small, format="PNG")
    shard = tmp_path / "odd.tar"
    with tarfile.open(shard, "w") as tar:
        add(tar, "a.jpg", photos["astronaut"][0])  # over the 4,000-byte limit below
        add(tar, "a.txt", b"an astronaut")
        add(tar, "b.png", small.getvalue())
        add(tar, "b.txt", b"a red square")
        add(tar, "b.json", b"[" * 1900 + b"]" * 1900)  # 3,800 bytes, deeper than the recursion limit
        add(tar, "c.png", small.getvalue())
        add(tar, "c.txt", b"another red square")
        add(tar, "c.cls", b"7")
        add(tar, "c.mp3", b"\x00" * 10_000)  # unused, and over the limit: skipped, never read
    limits = {**settings.section("ingest"), "max_member_bytes": 4000}
    report = ingest_memory([str(shard)], "webdataset", settings.path("memory"), settings.path("quarantine"), limits)
    assert report.ingested == 2 and report.quarantined == {"member_too_large": 1, "missing_image": 1}
    rows = {r["id"]: r for r in lance.dataset(str(settings.path("memory"))).to_table().to_pylist()}
    assert set(rows) == {"b", "c"}
    assert "b.json is not valid JSON: RecursionError" in json.loads(rows["b"]["meta"])["json_error"]
    q = lance.dataset(str(settings.path("quarantine"))).to_table().to_pylist()
    big = next(r for r in q if r["reason"] == "member_too_large")
    assert big["key"] == "a.jpg" and big["detail"].endswith("at most 4,000 (ingest.max_member_bytes)")


def test_image_columns_as_people_write_them(settings, photos, tmp_path):
    """An image column as Hugging Face datasets write it ({bytes, path} structs) is read; a column of
    URLs, or of text, is a quarantine row per sample with its reason; a decompression bomb is
    image_too_large, never decoded."""
    jpeg = photos["astronaut"][0]
    bomb = io.BytesIO()
    Image.new("RGB", (12000, 12000)).save(bomb, format="PNG")  # 144 Mpx: over PIL's bomb limit
    hf = pa.table(
        {
            "key": ["h0", "h1"],
            "caption": ["an astronaut", "a huge black square"],
            "image": pa.array(
                [{"bytes": jpeg, "path": "h0.jpg"}, {"bytes": bomb.getvalue(), "path": "h1.png"}],
                pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
            ),
        }
    )
    pq.write_table(hf, tmp_path / "hf.parquet")
    report = ingest(settings, [tmp_path / "hf.parquet"], fmt="parquet")
    assert report.ingested == 1 and report.quarantined == {"image_too_large": 1}
    stored = lance.dataset(str(settings.path("memory"))).to_table().to_pylist()
    assert [(r["id"], r["image"] == jpeg) for r in stored] == [("h0", True)]
    urls = pa.table({"key": ["u0", "u1"], "caption": ["a", "b"], "image": ["https://example.org/u0.jpg", "just text"]})
    pq.write_table(urls, tmp_path / "urls.parquet")
    report = ingest(settings, [tmp_path / "urls.parquet"], fmt="parquet")
    assert report.ingested == 0 and report.quarantined == {"image_is_url": 1, "image_not_binary": 1}
