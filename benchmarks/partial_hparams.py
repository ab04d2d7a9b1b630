"""How the CPU default's hyperparameters were chosen: cached `partial` on all default training
tweets, evaluated on the default test split, for a few (learning rate, batch, epochs) settings.

python -m benchmarks.partial_hparams lr=1e-4,bs=32,ep=1 lr=3e-4,bs=32,ep=2 ...   (writes `default-hparams`)
Each setting trains MiniLM's top 2 layers + the standard head on the frozen-prefix cache
(bf16 on this CPU), exactly as the refit step does, and predicts the test split with the whole model.
"""
from __future__ import annotations

import sys
import time

from benchmarks.report import stamp, update_section


def main(argv: list[str]) -> None:
    from benchmarks.finetune_default import _split, _train
    from tuneline.engine.trainer import predict_proba
    from tuneline.metrics import classification_metrics

    train, test, names = _split()
    texts, y = train["text"].tolist(), train["label_id"].to_numpy()
    rows = []
    for setting in argv:
        kv = dict(item.split("=") for item in setting.split(","))
        start = time.perf_counter()
        fit, cfg, prefix_s = _train("partial", True, "bf16", texts, y, names, learning_rate=float(kv["lr"]),
                                    batch_size=int(kv["bs"]), epochs=int(kv["ep"]))
        proba = predict_proba(fit.model, fit.tokenizer, test["text"].tolist(), cfg.max_length, 128, precision=cfg.precision)
        m = classification_metrics(test["label_id"].to_numpy(), proba)
        rows.append(f"| {kv['lr']} | {kv['bs']} | {kv['ep']} | {fit.samples_per_s:.0f} | {time.perf_counter() - start:.0f} | "
                    f"{100 * m['accuracy']:.1f} | {m['f1_macro']:.4f} |")
        print(rows[-1], flush=True)
    update_section("default-hparams", (
        "## Fine-tuning default: choosing the CPU `partial` hyperparameters\n\n"
        f"Cached partial (top 2 of 6 layers + pooler/classifier, bf16) on all {len(train)} default training tweets, "
        f"test on the {len(test)} default test tweets; one process, settings one after another.\n\n"
        "| learning rate | batch | epochs | training samples/s | wall s | test accuracy | test macro-F1 |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        + stamp("python -m benchmarks.partial_hparams " + " ".join(argv))))


if __name__ == "__main__":
    main(sys.argv[1:])
