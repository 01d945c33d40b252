"""The ablation's plots: quality against sampling latency, quality against the information
budget, and the loss curves per arm against training FLOPs."""

from __future__ import annotations

from pathlib import Path


def plot_all(arms: dict, tokenizers: dict, root: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.ablate.data import bits_per_image

    done = {n: a for n, a in arms.items() if a["stats"]["overall"][0] is not None}
    out = {}

    def scatter(name: str, x_of, xlabel: str, log_x: bool) -> None:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for arm, a in done.items():
            x = x_of(arm, a)
            if x is None:
                continue
            (y, dy) = a["stats"]["overall"]
            ax.errorbar([x[0]], [y], xerr=[x[1]] if x[1] else None, yerr=[dy], fmt="o", capsize=3)
            ax.annotate(arm, (x[0], y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set(xlabel=xlabel, ylabel="generation accuracy (overall)", title=name)
        if log_x:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        path = root / f"report_{name.replace(' ', '_')}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        out[name] = path

    scatter("quality vs latency", lambda _, a: a["stats"]["seconds_per_image"] if a["stats"]["seconds_per_image"][0]
            else None, "seconds per image (mean over seeds)", False)
    scatter("quality vs information budget",
            lambda _, a: (bits_per_image(tokenizers.get(a["tokenizer"], {})), 0)
            if bits_per_image(tokenizers.get(a["tokenizer"], {})) else None,
            "bits per image (discrete: L x log2 V; KL: raw float32, an upper bound)", True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, a in done.items():
        for i, curve in enumerate(a["curves"]):
            if curve:
                flops, loss = zip(*curve)
                ax.plot(flops, loss, color=f"C{list(done).index(arm) % 10}", alpha=0.8, label=arm if i == 0 else None)
    ax.set(xlabel="training FLOPs", ylabel="training loss", title="loss curves (every seed)", yscale="log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    path = root / "report_losses.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    out["losses"] = path
    return out
