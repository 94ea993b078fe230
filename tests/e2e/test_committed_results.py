"""The committed leaderboards are what their committed results say, under today's code.

A results folder that keeps its runs (``results/<folder>/store/``, written by ``umdbench
copy-results``) is copied into a temporary work dir and every board beside it is rendered again;
the markdown and the runs file must match the committed ones (the render time aside). A board
edited by hand, a result that lost its predictions, or a change to how boards are computed that
was not followed by a re-render fails here."""

import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from umdbench.run.workspace import Workspace

RESULTS = Path(__file__).resolve().parents[2] / "results"
BOARDS = sorted(
    (store_dir, board)
    for store_dir in RESULTS.glob("**/store")
    if (store_dir / "results.sqlite").is_file()
    for board in store_dir.parent.glob("*.md")
    if (store_dir.parent / f"{board.stem}-runs.jsonl").is_file()
)


def _copy_of(store_dir: Path, tmp_path: Path) -> Workspace:
    """The committed store, copied first: opening a store migrates an older layout in place, and the
    committed file must stay as it was committed."""
    return Workspace(shutil.copytree(store_dir, tmp_path / "committed"))


def _without_render_time(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("- generated "))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """``store_dir -> folder of boards``: each committed store copied into a fresh work dir and every
    suite it holds rendered once by `umdbench leaderboard --work-dir WORK --out OUT` (the command the
    notes give), shared by the tests below (rendering a store takes seconds)."""
    from umdbench.cli import main

    done: dict[Path, Path] = {}

    def render(store_dir: Path) -> Path:
        if store_dir not in done:
            tmp = tmp_path_factory.mktemp(store_dir.parent.name)
            work = Workspace(tmp / "work")
            counts = work.copy_results_from(_copy_of(store_dir, tmp))
            assert counts["unverified"] == 0, "a committed result lost its per-example predictions"
            assert main(["leaderboard", "--work-dir", str(work.work_dir), "--out", str(tmp / "out")]) == 0
            done[store_dir] = tmp / "out"
        return done[store_dir]

    return render


@pytest.mark.parametrize("store_dir,board", BOARDS, ids=[str(b.relative_to(RESULTS)) for _, b in BOARDS])
def test_a_committed_board_renders_again_from_its_committed_runs(store_dir, board, rendered):
    out = rendered(store_dir)
    assert _without_render_time((out / board.name).read_text()) == _without_render_time(board.read_text())
    runs = f"{board.stem}-runs.jsonl"
    assert (out / runs).read_text() == (board.parent / runs).read_text()


def test_committed_stores_are_found_and_each_has_a_board():
    # without this, a moved or renamed store would leave the parametrised test with nothing to check
    assert any(b.name == "table4.md" and b.parent.name == "small" for _, b in BOARDS), BOARDS
    for store_dir in RESULTS.glob("**/store"):
        assert any(b.parent == store_dir.parent for _, b in BOARDS), f"{store_dir} has no board beside it"


def test_the_leaderboard_of_a_committed_store_renders_every_suite(rendered):
    """`umdbench leaderboard --work-dir results/small/store` (no --suite), as the notes say to run it;
    VQA-Med-2019's closed accuracy is undefined (no closed question) and shows as n/a."""
    out = rendered(RESULTS / "small" / "store")
    assert "n/a" in (out / "runs.md").read_text()
    assert {"table1.md", "table4.md", "fig5.md"} <= {p.name for p in out.glob("*.md")}


MACHINE_PATH = re.compile(r"(?<![\w<.])/(?:work|home|root|tmp|Users|mnt|scratch|data|opt|srv|var)/")


def test_no_committed_result_names_a_path_of_the_machine_that_made_it():
    """Rows, boards, runs files and notes say `<data-root>/...`: the fingerprint identifies the data."""
    found = []
    for path in RESULTS.rglob("*"):
        if path.suffix in (".md", ".jsonl", ".json", ".txt") and MACHINE_PATH.search(path.read_text()):
            found.append(str(path.relative_to(RESULTS)))
        if path.suffix == ".sqlite":
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)  # read-only: never migrated here
            try:
                for row in con.execute("SELECT * FROM runs"):
                    if any(isinstance(v, str) and MACHINE_PATH.search(v) for v in row):
                        found.append(f"{path.relative_to(RESULTS)}: {row[0][:12]}")
            finally:
                con.close()
    assert not found, found


def test_stored_configs_are_portable(tmp_path):
    from umdbench.util import portable_paths

    cfg = {
        "dataset": {"root": str(tmp_path / "data" / "slake")},
        "ckpt": "/opt/weights/v.pt",
        "deviations": [f"read {tmp_path / 'data'}/slake/x"],
        "n": 3,
    }
    out = portable_paths(cfg, tmp_path / "data")
    assert out == {
        "dataset": {"root": "<data-root>/slake"},
        "ckpt": ".../v.pt",
        "deviations": ["read <data-root>/slake/x"],
        "n": 3,
    }
