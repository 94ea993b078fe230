"""Image-free reference points: majority answer and question-only classifier."""

from umdbench.api import Record
from umdbench.cli import main
from umdbench.results.reference_points import majority_baseline, question_only_baseline


def _rec(q, a, t):
    return Record(uid=q + a, image="x.jpg", text=q, answer=a, answer_type=t)


def test_majority_uses_most_frequent_answer_per_type():
    train = [_rec("is it?", "yes", "closed")] * 3 + [_rec("is it?", "no", "closed"), _rec("what?", "ct", "open")]
    test = [_rec("is it?", "yes", "closed"), _rec("is it?", "no", "closed"), _rec("what?", "ct", "open")]
    assert majority_baseline(train, test) == {"overall": 200 / 3, "open": 100.0, "closed": 50.0}


def test_question_only_learns_question_dependent_answers_but_not_image_ones():
    train = [_rec("what organ is this", "liver", "open"), _rec("which modality", "ct", "open")] * 20
    test = [_rec("what organ is this", "liver", "open"), _rec("which modality", "ct", "open")]
    assert question_only_baseline(train, test)["overall"] == 100.0


def test_cli_baselines_on_embedded_dataset(capsys):
    assert main(["baselines", "medsynth", "--cfg-options", "n_train=400", "n_test=200", "n_val=20"]) == 0
    out = capsys.readouterr().out
    assert "majority answer" in out and "question only" in out
    # medsynth balances answers per question, so neither baseline gets far above chance (about 42 %)
    for line in out.strip().splitlines():
        overall = float(line.split("overall=")[1].split()[0])
        assert overall < 60.0


def _run_tiny_medsynth(work, opts: list[str]) -> int:
    """`umdbench run` of plain fine-tuning on medsynth for 2 steps, with dataset options ``opts``."""
    argv = ["run", "--pretrain", "none", "--tune", "direct", "--dataset", "medsynth", "--work-dir", str(work)]
    cfg = ["tune.0.train.max_iters=2", "data.num_workers=0", *[f"dataset.options.{o}" for o in opts]]
    return main([*argv, "--cfg-options", *cfg])


def test_cli_baselines_kept_under_the_fingerprint_a_run_records(tmp_path, capsys):
    """`baselines --work-dir` keeps them under the split's data fingerprint, the one a run on the same
    data stores in its row, so the leaderboard can match them (its rendering: test_leaderboard_suites)."""
    import json

    from umdbench.results.reference_points import reference_key
    from umdbench.results.store import ResultsStore
    from umdbench.run.workspace import Workspace

    opts = ["n_train=400", "n_test=200", "n_val=20"]
    work = tmp_path / "wd"
    assert main(["baselines", "medsynth", "--cfg-options", *opts, "--work-dir", str(work)]) == 0
    printed = {
        " ".join(line.split()[2:4]): float(line.split("overall=")[1].split()[0])
        for line in capsys.readouterr().out.splitlines()
        if "overall=" in line
    }
    assert _run_tiny_medsynth(work, opts) == 0
    row = ResultsStore(Workspace(work).store_path).rows()[0]
    kept = json.loads(Workspace(work).reference_points_path.read_text())
    assert list(kept) == [reference_key("medsynth", "test", row["data_fingerprint"])]
    points = kept[reference_key("medsynth", "test", row["data_fingerprint"])]
    assert {name: round(v["overall"], 2) for name, v in points.items()} == printed


def test_cli_baselines_of_a_whole_work_dir(tmp_path, capsys):
    """Without DATASET, `baselines --work-dir` covers each VQA split the store's rows were evaluated
    on, read with the rows' own dataset options, and skips what it has kept already."""
    import json

    from umdbench.plugin import get_registries
    from umdbench.results.reference_points import question_only_baseline
    from umdbench.results.store import ResultsStore
    from umdbench.run.workspace import Workspace

    work = tmp_path / "wd"
    opts = ["n_train=300", "n_test=120", "n_val=20"]
    assert _run_tiny_medsynth(work, opts) == 0
    capsys.readouterr()
    assert main(["baselines", "--work-dir", str(work)]) == 0
    kept = json.loads(Workspace(work).reference_points_path.read_text())
    row = ResultsStore(Workspace(work).store_path).rows()[0]
    ((key, points),) = kept.items()
    assert key == f"medsynth|test|{row['data_fingerprint']}"
    data = get_registries().dataset.get("medsynth")(root=None, n_train=300, n_test=120, n_val=20)
    assert points["question only"] == question_only_baseline(data.records("train"), data.records("test"))
    assert main(["baselines", "--work-dir", str(work)]) == 0
    assert "medsynth test: kept already" in capsys.readouterr().out
    assert main(["baselines"]) == 2  # neither a dataset nor a work dir: the one-line error, exit 2
    # a row whose data is not on this machine is skipped with its reason; the others are kept
    ghost = dict(
        row,
        cell_key="ghost",
        dataset="vqa-rad",
        data_fingerprint="gone",
        config={"dataset": {"type": "vqa-rad", "root": str(tmp_path / "absent"), "options": {}}},
    )
    ResultsStore(Workspace(work).store_path).add(ghost)
    capsys.readouterr()
    assert main(["baselines", "--work-dir", str(work)]) == 0
    out = capsys.readouterr().out
    assert "vqa-rad test: skipped, its data cannot be read here" in out and "medsynth test: kept already" in out
