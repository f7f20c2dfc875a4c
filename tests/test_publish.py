import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emdm.errors import UserError
from emdm.provenance import write_results
from emdm.publish import Publication, check_writable, file_hash, read_results

ROOT = Path(__file__).resolve().parent.parent


def _publish(out, name, value, n=3):
    rows = [{"metric": "m", "value": value, "i": i} for i in range(n)]
    return write_results(
        name, rows, {"value": value}, wall_time=0.0, out_dir=out, quick=True,
        arrays={f"{name}_a.npy": np.full(4, value)},
    )  # fmt: skip


def test_files_published_with_their_hashes(tmp_path):
    csv, js = _publish(tmp_path, "r", 1.5)
    meta = json.loads(js.read_text())
    assert set(meta["files"]) == {"r.csv", "r_a.npy"}
    for name, digest in meta["files"].items():
        assert file_hash(tmp_path / name) == digest
    # nothing left behind but the lock
    assert sorted(p.name for p in tmp_path.iterdir()) == [".publish.lock", "r.csv", "r.json",
                                                          "r_a.npy"]  # fmt: skip
    frame, meta = read_results("r", tmp_path)
    assert frame.value.tolist() == [1.5] * 3 and meta["config"] == {"value": 1.5}


def test_an_error_while_staging_leaves_the_folder_as_it_was(tmp_path):
    _publish(tmp_path, "r", 1.0)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(RuntimeError), Publication(tmp_path, "r") as pub:
        pub.path("r.csv").write_text("metric,value\nm,2\n")
        raise RuntimeError("killed while writing the figure")
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before
    assert not list(tmp_path.glob(".r.*"))


def test_a_publication_killed_after_its_commit_point_is_completed(tmp_path):
    _publish(tmp_path, "r", 1.0)
    # what a publisher killed between two renames leaves: the committed folder, one file moved
    pub = Publication(tmp_path, "r")
    pd.DataFrame([{"metric": "m", "value": 2.0}]).to_csv(pub.path("r.csv"), index=False)
    np.save(pub.path("r_a.npy"), np.full(4, 2.0))
    pub.write_json("r.json", {"config": {"value": 2.0}})
    (pub.staging / "manifest.json").write_text(json.dumps({"order": pub.order}))
    pending = tmp_path / ".r.publish"
    os.rename(pub.staging, pending)
    os.replace(pending / "r.csv", tmp_path / "r.csv")
    # a mixed set now: the next reader completes it before reading
    frame, meta = read_results("r", tmp_path)
    assert frame.value.tolist() == [2.0] and meta["config"] == {"value": 2.0}
    assert np.load(tmp_path / "r_a.npy").tolist() == [2.0] * 4
    assert not pending.exists()


def test_stale_staging_folders_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / ".r.staging-999999999-abc"
    dead.mkdir(parents=True)
    (dead / "r.csv").write_text("x")
    _publish(tmp_path, "r", 1.0)
    assert not dead.exists()


def test_a_mixed_pair_is_detected(tmp_path):
    _publish(tmp_path, "r", 1.0)
    (tmp_path / "r.csv").write_text("metric,value\nm,3\n")  # written around the publication
    with pytest.raises(ValueError, match="does not belong with"):
        read_results("r", tmp_path)


def test_file_names_must_be_plain(tmp_path):
    with Publication(tmp_path, "r") as pub:
        for bad in ("", "a/b", "../x", ".hidden"):
            with pytest.raises(ValueError, match="plain"):
                pub.path(bad)
        pub.path("ok.txt").write_text("ok")


def test_unwritable_output_is_refused_before_work(tmp_path):
    with pytest.raises(UserError, match="cannot write results into /proc/nope"):
        check_writable("/proc/nope")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="--out"):
        check_writable(blocker / "sub")


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from emdm.provenance import write_results
    out, tag, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    for i in range(n):
        value = tag * 1000 + i
        rows = [{"metric": "m", "value": value, "i": j} for j in range(50)]
        write_results("r", rows, {"value": value}, wall_time=0.0, out_dir=out, quick=True,
                      arrays={"r_a.npy": np.full(64, value)})
    """
)

READER = textwrap.dedent(
    """
    import os
    import sys
    from emdm.publish import read_results
    out, stop = sys.argv[1], sys.argv[2]
    mixed = seen = 0
    while not os.path.exists(stop):  # until the writers are done
        try:
            frame, meta = read_results("r", out)
        except FileNotFoundError:
            continue
        seen += 1
        if not (frame.value == meta["config"]["value"]).all():
            mixed += 1
    print(seen, mixed)
    """
)


def test_concurrent_writers_and_a_reader_never_see_a_mixed_pair(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(tag), "40"], env=env)
        for tag in (1, 2)
    ]
    stop = tmp_path.parent / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(tmp_path), str(stop)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    for w in writers:
        assert w.wait(timeout=300) == 0
    stop.write_text("")
    stdout, stderr = reader.communicate(timeout=300)
    assert reader.returncode == 0, stderr
    seen, mixed = map(int, stdout.split())
    assert seen > 0 and mixed == 0
    frame, meta = read_results("r", tmp_path)
    assert (frame.value == meta["config"]["value"]).all()
    assert file_hash(tmp_path / "r_a.npy") == meta["files"]["r_a.npy"]
