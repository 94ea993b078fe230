"""ROCO, MELINDA, MedICaT, roco-medicat on generated fixtures in the exact release format, and
bad-input handling (errors name the file and the record)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from umdbench.api import DataError
from umdbench_plugins.datasets.medicat import Medicat, RocoMedicat
from umdbench_plugins.datasets.melinda import Melinda
from umdbench_plugins.datasets.roco import Roco
from umdbench_plugins.datasets.slake import Slake
from umdbench_plugins.datasets.vqa_med_2019 import VQAMed2019
from umdbench_plugins.datasets.vqa_rad import VQARad

WORDS = "axial computed tomography scan of the chest showing a large mass in the left lower lobe".split()


def jpeg(path: Path, seed: int = 0, size=(24, 20)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, format="JPEG")


def caption(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_roco(root: Path, counts={"train": 30, "validation": 40, "test": 25}, images=True, seed=0) -> dict:
    """ROCO release layout: <split>/radiology/{captions,dlinks}.txt + images/ROCO_xxxxx.jpg."""
    rng = random.Random(seed)
    made = {}
    n = 0
    for split, count in counts.items():
        rad = root / split / "radiology"
        rad.mkdir(parents=True, exist_ok=True)
        caps, links = [], []
        for _ in range(count):
            n += 1
            rid = f"ROCO_{n:05d}"
            words = rng.choice([1, 2, 3, 5, 9])  # some captions too short (< 3 words)
            caps.append(f"{rid}\t {caption(rng, words)}  ")
            links.append(
                f"{rid}\twget -r ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/aa/bb/PMC{1000 + n}.tar.gz "
                f"-P /path/to/Dir\tfig{n}.jpg"
            )
            if images:
                jpeg(rad / "images" / f"{rid}.jpg", seed=n)
        (rad / "captions.txt").write_text("\n".join(caps) + "\n")
        (rad / "dlinks.txt").write_text("\n".join(links) + "\n")
        made[split] = caps
    return made


def upstream_eval_ids(root: Path, split_dir: str, before: list[str], limit: int) -> list[str]:
    """The upstream rule, re-derived: one seed-42 generator shuffles train, then val, then test lines."""
    rng = random.Random(42)
    for d in before:
        rng.shuffle((root / d / "radiology" / "captions.txt").read_text().strip().split("\n"))
    lines = (root / split_dir / "radiology" / "captions.txt").read_text().strip().split("\n")
    rng.shuffle(lines)
    out = []
    for line in lines:
        rid, cap = line.strip().split("\t")
        if len(cap.split()) >= 3:
            out.append(rid)
            if len(out) == limit:
                break
    return out


# ------------------------------------------------------------------------------------------------
def test_roco_retrieval_pairs(tmp_path):
    root = tmp_path / "roco"
    make_roco(root)
    ds = Roco(root, eval_size=10)
    val = ds.records("val")  # release folder name "validation" accepted
    assert [r.extra["roco_id"] for r in val] == upstream_eval_ids(root, "validation", ["train"], 10)
    assert len(val) == 10 and all(len(r.text.split()) >= 3 for r in val)
    assert all(r.text == r.text.strip() and "  " not in r.text for r in val)
    assert [r.extra["roco_id"] for r in ds.records("test")] == upstream_eval_ids(
        root, "test", ["train", "validation"], 10
    )
    train = ds.records("train")  # train keeps every caption with >= 3 words
    n_long = sum(
        len(line.split("\t")[1].split()) >= 3
        for line in (root / "train/radiology/captions.txt").read_text().splitlines()
    )
    assert len(train) == n_long
    assert all(Path(r.image).is_file() and Path(r.image).stem == r.extra["roco_id"] for r in train)
    assert ds.label_names() is None and ds.task == "retrieval"
    assert ds.check().ok


def test_roco_val_folder_name_and_missing_images(tmp_path):
    root = tmp_path / "roco"
    make_roco(root, counts={"train": 5, "val": 12, "test": 5}, images=False)
    with pytest.raises(DataError, match=r"captions\.txt: record roco/val/ROCO_\d+: image .*ROCO_\d+\.jpg not found"):
        Roco(root).records("val")
    ds = Roco(root, on_error="skip")
    assert ds.records("val") == [] and len(ds.skipped) > 0
    report = Roco(root).check()
    assert not report.ok and all("missing" in p for p in report.problems)


def test_roco_malformed_line(tmp_path):
    root = tmp_path / "roco"
    make_roco(root, counts={"train": 3, "validation": 3, "test": 3})
    cap = root / "test" / "radiology" / "captions.txt"
    cap.write_text(cap.read_text() + "ROCO_99999 no tab in this line at all\n")
    with pytest.raises(DataError, match=r"test/radiology/captions\.txt: line 4: expected 'ROCO_ID<TAB>caption'"):
        Roco(root).records("test")


# ------------------------------------------------------------------------------------------------
MELINDA_COLS = ["figure_file", "caption", "i_meth", "p_meth", "i_meth_label", "p_meth_label"]
P_LABELS = ["Experiment", "Imaging", "Microscopy", "Modeling", "Others", "Sequencing", "Staining"]


def make_melinda(root: Path, rows={"train": 20, "dev": 8, "test": 9}, cols=MELINDA_COLS) -> None:
    rng = random.Random(1)
    n = 0
    for split, count in rows.items():
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f"{split}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(cols)
            for _ in range(count):
                n += 1
                name = f"PMC{n}_fig{n}.jpg"
                jpeg(root / "melinda_images" / name, seed=n)
                p = P_LABELS[n % 7] if split != "test" else P_LABELS[n % 3]
                w.writerow(
                    [
                        name,
                        f"Figure {n}. {caption(rng, 6)}, with commas",
                        f"meth {n % 5}",
                        f"pm {n % 4}",
                        f"ilabel{n % 3}",
                        p,
                    ][: len(cols)]
                )


def test_melinda_classification(tmp_path):
    root = tmp_path / "melinda"
    make_melinda(root)
    ds = Melinda(root)
    assert ds.label_names() == P_LABELS  # sorted unique over all splits
    assert [len(ds.records(s)) for s in ds.splits] == [20, 8, 9]
    r = ds.records("train")[0]
    assert ds.label_names()[r.label] == r.extra["p_meth_label"] and "commas" in r.text
    other = Melinda(root, label="i_meth_label")
    assert other.label_names() == ["ilabel0", "ilabel1", "ilabel2"]
    assert ds.check().ok
    assert ds.fingerprint() != other.fingerprint()


def test_melinda_wrong_columns(tmp_path):
    root = tmp_path / "melinda"
    make_melinda(root, cols=MELINDA_COLS[:5])
    with pytest.raises(DataError, match=r"train\.csv: header row: missing column\(s\) \['p_meth_label'\]"):
        Melinda(root).records("train")
    report = Melinda(root).check()
    assert any("train.csv" in p and "p_meth_label" in p for p in report.problems)


def test_melinda_short_row(tmp_path):
    root = tmp_path / "melinda"
    make_melinda(root)
    with open(root / "dev.csv", "a") as fh:
        fh.write("lonely.jpg,only two fields\n")
    with pytest.raises(DataError, match=r"dev\.csv: record line 10: wrong number of columns"):
        Melinda(root).records("val")
    ds = Melinda(root, on_error="skip")
    assert len(ds.records("val")) == 8 and len(ds.skipped) == 1


# ------------------------------------------------------------------------------------------------
def make_medicat(root: Path, n: int = 8, release: bool = True) -> Path:
    base = root / "release" if release else root
    (base / "figures").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        row = {
            "pdf_hash": f"{i:040x}",
            "fig_uri": f"2-Figure{i}-1.png",
            "fig_key": f"Figure{i}",
            "s2_caption": f"Figure {i}. MRI of the brain showing a lesion." if i % 4 else "Fig",
            "s2orc_caption": "x",
            "s2orc_references": ["The lesion is seen on MRI (Figure 1).", "ok"] if i % 2 else None,
            "radiology": i != 3,
            "scope": False,
            "predicted_type": "Medical images",
            "oa_info": {},
        }
        Image.fromarray(np.full((10, 12, 3), i * 20, dtype=np.uint8)).save(
            base / "figures" / f"{row['pdf_hash']}_{row['fig_uri']}"
        )
        rows.append(json.dumps(row))
    jsonl = base / "s2_full_figures_oa_nonroco_combined_medical_top4_public.jsonl"
    jsonl.write_text("\n".join(rows) + "\n")
    return jsonl


def test_medicat_release_layout_and_split_rule(tmp_path):
    make_medicat(tmp_path / "medicat")
    ds = Medicat(tmp_path / "medicat", val_size=2, test_size=2)
    idx = list(range(7))  # 7 radiology figures
    random.Random(42).shuffle(idx)
    expected = {"train": idx[:-4], "val": idx[-4:-2], "test": idx[-2:]}
    radiology = [i for i in range(8) if i != 3]
    for split, positions in expected.items():
        figs = [f"{radiology[p]:040x}" for p in positions]
        got = list(dict.fromkeys(Path(r.image).name.split("_")[0] for r in ds.records(split)))
        # figures whose texts are all shorter than 3 words contribute nothing
        assert got == [f for f in figs if int(f, 16) % 4 or int(f, 16) % 2]
    texts = [r.text for s in ds.splits for r in ds.records(s)]
    assert (
        "Fig" not in texts
        and "ok" not in texts
        and len(texts) == len(set(r.uid for s in ds.splits for r in ds.records(s)))
    )


def test_medicat_malformed_line(tmp_path):
    jsonl = make_medicat(tmp_path / "medicat")
    jsonl.write_text(jsonl.read_text() + '{"pdf_hash": "abc", "fig_uri": \n')
    with pytest.raises(DataError, match=r"release/s2_full_figures.*\.jsonl: line 9: invalid JSON"):
        Medicat(tmp_path / "medicat").records("test")


def test_roco_medicat_corpus(tmp_path):
    make_roco(tmp_path / "roco", counts={"train": 12, "validation": 6, "test": 6})
    make_medicat(tmp_path / "medicat", n=8)
    refs_dir = tmp_path / "medicat" / "net/nfs2.corp/allennlp/sanjays/roco_files"
    refs_dir.mkdir(parents=True)
    # MedICaT inline references of ROCO figures: keyed PMCxxxx_<figure file> through dlinks.txt
    (refs_dir / "roco_train_references.jsonl").write_text(
        json.dumps(
            {
                "roco_image_id": "PMC1001_fig1.jpg",
                "gorc_references": ["As shown in the CT scan (Figure 2).", "too short"],
            }
        )
        + "\n"
    )
    ds = RocoMedicat(tmp_path, val_size=2, test_size=2)
    assert ds.task == "pretrain" and ds.root_subdir is None
    train = ds.records("train")
    by_source = {s: [r for r in train if r.extra["source"] == s] for s in ("roco", "medicat")}
    ref = [r for r in by_source["roco"] if r.extra["kind"] == "reference"]
    assert len(ref) == 1 and ref[0].image.endswith("ROCO_00001.jpg")
    roco_caps = [
        ln
        for ln in (tmp_path / "roco/train/radiology/captions.txt").read_text().splitlines()
        if len(ln.split("\t")[1].split()) >= 3
    ]
    assert len(by_source["roco"]) == len(roco_caps) + 1
    assert len(by_source["medicat"]) == len(Medicat(tmp_path / "medicat", val_size=2, test_size=2).records("train"))
    assert all(len(r.text.split()) >= 3 for r in train)
    assert len({r.uid for r in train}) == len(train)
    assert len(ds.records("val")) > 0 and ds.check().ok
    with pytest.raises(DataError, match="medicat folder"):
        RocoMedicat(tmp_path, medicat_dir="nowhere").records("train")
    assert len(RocoMedicat(tmp_path, use_medicat=False).records("test")) > 0


# ------------------------------------------------------------------------------------------------
def make_vqa_rad(root: Path, rows: list, test_rows: list | None = None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    jpeg(root / "images" / "synpic1.jpg")
    (root / "trainset.json").write_text(json.dumps(rows))
    (root / "testset.json").write_text(json.dumps(test_rows or rows[:1]))


def rad_row(qid, **kw):
    row = {
        "qid": qid,
        "image_name": "synpic1.jpg",
        "question": "Is this normal?",
        "answer": "Yes",
        "answer_type": "CLOSED",
        "question_type": "PRES",
        "phrase_type": "freeform",
        "image_organ": "CHEST",
    }
    row.update(kw)
    return row


def test_vqa_missing_image_names_file_and_record(tmp_path):
    make_vqa_rad(tmp_path / "vqa_rad", [rad_row(1), rad_row(2, image_name="synpic404.jpg")])
    with pytest.raises(
        DataError, match=r"trainset\.json: record vqa-rad/train/2: image images/synpic404\.jpg not found"
    ):
        VQARad(tmp_path / "vqa_rad").records("train")
    ds = VQARad(tmp_path / "vqa_rad", on_error="skip")
    assert [r.uid for r in ds.records("train")] == ["vqa-rad/train/1"] and len(ds.skipped) == 1
    report = VQARad(tmp_path / "vqa_rad").check()
    assert any(
        p.startswith("images/synpic404.jpg: image missing; used by record vqa-rad/train/2") for p in report.problems
    )


def test_vqa_truncated_image_reported_by_check(tmp_path):
    make_vqa_rad(tmp_path / "vqa_rad", [rad_row(1)])
    img = tmp_path / "vqa_rad" / "images" / "synpic1.jpg"
    jpeg(img, size=(300, 300))
    img.write_bytes(img.read_bytes()[:600])
    report = VQARad(tmp_path / "vqa_rad").check()
    assert any(p.startswith("images/synpic1.jpg: image unreadable") and "vqa-rad/train/1" in p for p in report.problems)


def test_vqa_unknown_answer_type(tmp_path):
    make_vqa_rad(tmp_path / "vqa_rad", [rad_row(1), rad_row(7, answer_type="MAYBE")])
    with pytest.raises(DataError, match=r"trainset\.json: record #1 \(qid 7\): unknown answer type 'MAYBE'"):
        VQARad(tmp_path / "vqa_rad").records("train")
    ds = VQARad(tmp_path / "vqa_rad", on_error="skip")
    assert len(ds.records("train")) == 1 and "MAYBE" in ds.skipped[0]
    report = VQARad(tmp_path / "vqa_rad").check()
    assert any("qid 7" in p and "answer type" in p for p in report.problems)


def test_vqa_malformed_json_record_and_file(tmp_path):
    make_vqa_rad(tmp_path / "vqa_rad", [rad_row(1), {"qid": 5, "question": "no answer?"}, "junk"])
    with pytest.raises(
        DataError,
        match=r"trainset\.json: record #1 \(qid 5\): missing field\(s\) \['image_name', 'answer', 'answer_type'\]",
    ):
        VQARad(tmp_path / "vqa_rad").records("train")
    ds = VQARad(tmp_path / "vqa_rad", on_error="skip")
    assert len(ds.records("train")) == 1 and len(ds.skipped) == 2 and "record #2" in ds.skipped[1]
    (tmp_path / "vqa_rad" / "testset.json").write_text('[{"qid": 1,')
    with pytest.raises(DataError, match=r"testset\.json: invalid JSON at line 1"):
        VQARad(tmp_path / "vqa_rad").records("test")


def test_vqa_answers_are_normalised_and_types_lowercase(tmp_path):
    make_vqa_rad(
        tmp_path / "vqa_rad",
        [
            rad_row(1, answer="The Left Lung."),
            rad_row(2, answer=2, answer_type="CLOSED "),
            rad_row(3, answer="None", answer_type="OPEN"),
        ],
    )
    recs = VQARad(tmp_path / "vqa_rad").records("train")
    assert [(r.answer, r.answer_type) for r in recs] == [("left lung", "closed"), ("2", "closed"), ("0", "open")]
    assert recs[0].extra["raw_answer"] == "The Left Lung."


def test_slake_unknown_answer_type_and_lang(tmp_path):
    root = tmp_path / "slake"
    jpeg(root / "imgs" / "xmlab0" / "source.jpg")
    base = {
        "img_id": 0,
        "img_name": "xmlab0/source.jpg",
        "question": "Which organ?",
        "answer": "Liver",
        "q_lang": "en",
        "answer_type": "OPEN",
        "qid": 0,
    }
    rows = [
        base,
        {**base, "qid": 1, "q_lang": "zh", "question": "哪个器官?"},
        {**base, "qid": 2, "answer_type": "closed?"},
    ]
    for f in ("train.json", "validate.json", "test.json"):
        (root / f).write_text(json.dumps(rows[:2]))
    (root / "train.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"train\.json: record #2 \(qid 2\): unknown answer type 'closed\?'"):
        Slake(root).records("train")
    # the vocabulary covers every split, so the bad train row matters for val too unless skipped
    assert len(Slake(root, on_error="skip").records("val")) == 1
    assert len(Slake(root, lang="all", on_error="skip").records("val")) == 2


def test_vqa_med_wrong_columns(tmp_path):
    root = tmp_path / "vqa_med_2019"
    for split, folder in (("train", "Train_images"), ("val", "Val_images")):
        qa = root / split / "QAPairsByCategory"
        qa.mkdir(parents=True)
        jpeg(root / split / folder / "synpic1.jpg")
        for c in ("C1_Modality", "C2_Plane", "C3_Organ", "C4_Abnormality"):
            (qa / f"{c}_{split}.txt").write_text("synpic1|what plane is this?|axial\n")
    (root / "val" / "QAPairsByCategory" / "C2_Plane_val.txt").write_text("synpic1|axial\n")
    (root / "test").mkdir()
    (root / "test" / "VQAMed2019_Test_Questions_w_Ref_Answers.txt").write_text(
        "synpic1|plane|what plane?|axial\nsynpic1|colour|what colour?|red\n"
    )
    with pytest.raises(
        DataError, match=r"val/QAPairsByCategory/C2_Plane_val\.txt: line 1: expected 3 '\|'-separated fields"
    ):
        VQAMed2019(root).records("val")
    assert len(VQAMed2019(root, vocab="train").records("train")) == 3
    with pytest.raises(
        DataError, match=r"VQAMed2019_Test_Questions_w_Ref_Answers\.txt: line 2: unknown category 'colour'"
    ):
        VQAMed2019(root, verify_images=False).records("test")
    report = VQAMed2019(root).check()
    assert any("C2_Plane_val.txt: line 1" in p for p in report.problems)


def test_unknown_option_and_split(tmp_path):
    with pytest.raises(ValueError, match="unknown option"):
        VQARad(tmp_path, layuot="osf")
    with pytest.raises(ValueError, match="must be one of"):
        VQARad(tmp_path, layout="nope")
    make_vqa_rad(tmp_path / "vqa_rad", [rad_row(1)])
    with pytest.raises(ValueError, match="no split 'dev'"):
        VQARad(tmp_path / "vqa_rad").records("dev")
    with pytest.raises(DataError, match="does not exist"):
        VQARad(tmp_path / "nowhere").records("train")
