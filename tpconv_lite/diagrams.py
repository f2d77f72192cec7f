"""Diagrams for the chapters (matplotlib, imported only when a diagram is drawn).

:func:`box_diagram` draws labelled boxes at given positions and arrows between them: chapter 6's query, key and value
schematic and chapter 8's block diagram of the convolution layer. :func:`draw_chains` draws CA traces side by side
in 3D (chapters 11 and 12). matplotlib is not a dependency of the package;
it comes with the book's and the tests' extras.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

Box = tuple[float, float, str]  # centre x, centre y, text (matplotlib mathtext allowed)
Arrow = tuple[str, str] | tuple[str, str, str]  # from, to, optional label


def box_diagram(
    boxes: Mapping[str, Box],
    arrows: Sequence[Arrow],
    *,
    ax=None,
    width: float = 2.2,
    height: float = 0.7,
    colors: Mapping[str, str] | None = None,
    title: str | None = None,
):
    """Draw ``boxes`` (name -> (x, y, text)) and ``arrows`` ((from, to[, label])) on ``ax`` (a new figure if None).

    Arrows leave and enter the boxes at their borders, on the line between the two centres. A box's colour comes
    from ``colors`` (name -> matplotlib colour), light grey otherwise. The axes are hidden and scaled equally.

    Returns:
        The matplotlib ``Axes``.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> ax = box_diagram({"a": (0, 0, "in"), "b": (3, 0, "out")}, [("a", "b", "f")])
        >>> len(ax.patches), [t.get_text() for t in ax.texts]
        (3, ['in', 'out', 'f'])
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    for arrow in arrows:
        for end in arrow[:2]:
            if end not in boxes:
                raise ValueError(f"arrow {arrow} names {end!r}, which is not a box; boxes are {sorted(boxes)}")
    if ax is None:
        xs, ys = [b[0] for b in boxes.values()], [b[1] for b in boxes.values()]
        size = (1.0 + 0.9 * (max(xs) - min(xs) + width), 0.6 + 0.9 * (max(ys) - min(ys) + height))
        _, ax = plt.subplots(figsize=size)
    colors = colors or {}
    for name, (x, y, text) in boxes.items():
        ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.05",
                                    facecolor=colors.get(name, "#eeeeee"), edgecolor="#444444"))  # fmt: skip
        ax.text(x, y, text, ha="center", va="center", fontsize=9)

    def border(x: float, y: float, dx: float, dy: float) -> tuple[float, float]:
        """Where the ray from the centre (x, y) along (dx, dy) leaves the box."""
        scale = min(width / 2 / abs(dx) if dx else float("inf"), height / 2 / abs(dy) if dy else float("inf"))
        return x + 1.08 * scale * dx, y + 1.08 * scale * dy

    for arrow in arrows:
        (x0, y0, _), (x1, y1, _) = boxes[arrow[0]], boxes[arrow[1]]
        start, end = border(x0, y0, x1 - x0, y1 - y0), border(x1, y1, x0 - x1, y0 - y1)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color="#444444"))
        if len(arrow) == 3:
            ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12, arrow[2], ha="center", va="bottom",
                    fontsize=8, color="#444444")  # fmt: skip
    xs, ys = [b[0] for b in boxes.values()], [b[1] for b in boxes.values()]
    ax.set_xlim(min(xs) - width / 2 - 0.3, max(xs) + width / 2 + 0.3)
    ax.set_ylim(min(ys) - height / 2 - 0.3, max(ys) + height / 2 + 0.3)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def draw_chains(chains: Mapping[str, Tensor], title: str, *, size: float = 3.2) -> None:
    """Draw CA traces side by side in 3D, each centred and coloured from its first residue (blue) to its last (red).

    Args:
        chains: panel title -> (n, 3) positions in Å, one panel each.
        title: the figure's title.
        size: width and height of one panel, inches.
    """
    import matplotlib.pyplot as plt
    import torch

    fig = plt.figure(figsize=(size * len(chains), size))
    for i, (label, pos) in enumerate(chains.items()):
        ax = fig.add_subplot(1, len(chains), i + 1, projection="3d")
        pos = (pos - pos.mean(dim=0)).detach().cpu()
        ax.plot(*pos.T, color="0.6", linewidth=0.8)
        ax.scatter(*pos.T, c=torch.arange(len(pos)), cmap="coolwarm", s=6)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("x (Å)", fontsize=7), ax.set_ylabel("y (Å)", fontsize=7), ax.set_zlabel("z (Å)", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_box_aspect(None, zoom=0.85)  # room for the axis labels
    fig.suptitle(title)
    plt.show()
