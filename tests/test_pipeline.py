"""End to end through the CLI: pretrain -> checkpoint -> export -> finetune / evaluate, and resume."""

import json

from renderssl.cli import main
from renderssl.export import load_encoder

TINY = [
    "gmae.encoder.preset=null", "gmae.encoder.embed_dim=48", "gmae.encoder.depth=1", "gmae.encoder.num_heads=3",
    "gmae.encoder.img_size=32", "gmae.num_gaussians=32", "gmae.decoder_embed_dim=32", "gmae.decoder_depth=1",
    "gmae.decoder_num_heads=2", "data.width=32", "data.height=32", "data.views=3", "data.train_scenes=2",
    "data.val_scenes=1", "data.test_scenes=2", "train.batch_size=4", "train.ckpt_every=2", "train.preview_every=2",
    "train.log_every=1", "train.progress=false", "gmae.render_backend=tiles",
]


def test_pretrain_export_finetune_evaluate(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "gmae_tiny", *TINY, "train.steps=2", f"train.out_dir={run}"]) == 0
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", "previews/step_000002.png", "encoder/encoder.json"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    # Resume continues to a later step from the checkpoint.
    assert main(["pretrain", "gmae_tiny", *TINY, "train.steps=4", f"train.out_dir={run}", "--resume"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]

    assert main(["export", str(run), "--out", str(tmp_path / "enc")]) == 0
    encoder = load_encoder(tmp_path / "enc")
    assert set(encoder.state_dict()) == set(load_encoder(run / "encoder").state_dict())
    assert not any(k.startswith(("decoder", "query", "gaussian")) for k in encoder.state_dict())

    out = tmp_path / "ft.json"
    assert main(["finetune", str(tmp_path / "enc"), "downstream.steps=2", "downstream.batch_size=2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert 0 <= result["metrics"]["miou"] <= 1 and not set(result["train_scenes"]) & set(result["test_scenes"])

    assert main(["evaluate", str(run), "--max-frames", "2", "--layers", "4"]) == 0
    scores = json.loads((run / "evaluation.json").read_text())
    assert scores["reconstruction"]["psnr"] > 0 and 0 <= scores["zero_shot_edges"]["ods"] <= 1
    capsys.readouterr()


def test_bad_config_key_is_reported_by_name(tmp_path, capsys):
    assert main(["pretrain", "gmae_tiny", "gmae.num_gaussianz=3", f"train.out_dir={tmp_path}"]) == 2
    assert "override gmae.num_gaussianz=3: unknown key num_gaussianz in gmae; did you mean num_gaussians?" in capsys.readouterr().err
    assert main(["pretrain", "no_such_preset"]) == 2
    assert "presets:" in capsys.readouterr().err
