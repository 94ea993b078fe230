"""Image-free reference points: majority answer and question-only classifier."""
from umdbench.api import Record
from umdbench.results.baselines import majority_baseline, question_only_baseline
from umdbench.cli import main


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
