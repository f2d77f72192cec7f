"""Draw the book's learning path (book/_static/chapter_map.png): `python book/chapter_map.py`."""

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

CHAPTERS = {  # number: (title, what the reader builds, column, row)
    1: ("Rs lists → Irreps", "irreps, D(R), the checker", 0, 0),
    2: ("Radial bases", "ρ(r): bases + MLP", 1, 1),
    3: ("Spherical harmonics\n& tensor products", "Y(r̂), Clebsch-Gordan", 1, -1),
    4: ("Benzene convolution", "Σ ρ(r) Y(r̂) ⊗ f", 2, 0),
    5: ("Nonlinearities", "gates, norm activations", 3, 1),
    6: ("Attention", "softmax over edges, √α", 3, -1),
    7: ("Fused tensor product", "e3x's matrix trick", 3, -2.6),
    8: ("TensorProduct-\nConvLayer", "EigenFold / DiffDock layer", 4, 0),
    9: ("Score model", "toy proteins, chirality", 5, 0.8),
    10: ("Performance", "2x faster, measured", 5, -1.4),
    11: ("Harmonic diffusion", "real chains, polymer prior", 6, 0.8),
    12: ("Training on\nreal proteins", "torchrun, pretrained model", 7, -0.3),
}
EDGES = [(1, 2), (1, 3), (2, 4), (3, 4), (4, 5), (4, 6), (3, 7), (5, 8), (6, 8), (8, 9), (8, 10), (7, 10), (9, 11), (11, 12), (10, 12)]
COLOURS = {1: "#dbe9f6", 2: "#dbe9f6", 3: "#dbe9f6", 4: "#dbe9f6", 5: "#dbe9f6",
           6: "#fde7c8", 7: "#fde7c8", 8: "#fde7c8", 9: "#d9f0d3", 10: "#d9f0d3", 11: "#d9f0d3", 12: "#d9f0d3"}

fig, ax = plt.subplots(figsize=(19, 5.2))
width, height = 2.25, 1.15
for n, (title, built, col, row) in CHAPTERS.items():
    x, y = col * 2.7, row * 1.45
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.05",
                                facecolor=COLOURS[n], edgecolor="#444444"))
    ax.text(x, y + 0.17, f"{n}. {title}", ha="center", va="center", fontsize=8.5, weight="bold")
    ax.text(x, y - 0.36, built, ha="center", va="center", fontsize=8.5, color="#333333")
for a, b in EDGES:
    (xa, ya), (xb, yb) = [(CHAPTERS[k][2] * 2.7, CHAPTERS[k][3] * 1.45) for k in (a, b)]
    ax.add_patch(FancyArrowPatch((xa + width / 2 + 0.05, ya), (xb - width / 2 - 0.05, yb), arrowstyle="-|>",
                                 mutation_scale=12, color="#666666", connectionstyle="arc3,rad=0.0"))
for label, colour in [("building blocks", "#dbe9f6"), ("layers", "#fde7c8"), ("models and speed", "#d9f0d3")]:
    ax.scatter([], [], marker="s", s=120, color=colour, edgecolors="#444444", label=label)
ax.legend(loc="upper left", frameon=False, fontsize=9)
ax.set_xlim(-1.4, 20.3)
ax.set_ylim(-4.5, 2.4)
ax.set_axis_off()
ax.set_title("The learning path: each chapter builds on the ones its arrows come from", fontsize=11)
out = Path(__file__).with_name("_static") / "chapter_map.png"
fig.savefig(out, dpi=110, bbox_inches="tight")
print(f"wrote {out}")
