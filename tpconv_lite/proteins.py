"""Real protein chains: a loader for PDB and mmCIF files, a CA-only PDB writer, and a small embedded dataset.

A protein enters the book as a :class:`Chain`: its name, its one-letter sequence, the positions of its
alpha-carbons (CA) in Å and, where known, its secondary structure in three states.

**Loading** (:func:`load_chain`) reads PDB or mmCIF, gzipped or not, with gemmi (the optional extra
``pip install tpconv_lite[proteins]``; this module imports without it). The rules:

- the first model only;
- alternative conformations resolved as gemmi's ``remove_alternative_conformations`` does (the first one kept);
- the residues are the chain's polymer residues (``get_polymer()`` after ``setup_entities()``) that have a CA atom,
  in order; waters, ligands and nucleic acids never count;
- ``chain=None`` takes the first protein chain (polymer type L- or D-peptide);
- one-letter codes from gemmi's residue table, ``X`` for every non-standard residue (MSE, UNK, ...);
- the name is the file's stem (``1h4aX`` for ``1h4aX.pdb.gz``), followed by the chain id when the file holds more
  than one protein chain (``1BD2A``).

Bad input raises a ``ValueError`` that names the file and the problem; file-system problems raise ``OSError``.

**The embedded dataset** (:func:`load_dataset`) holds the 50 single-chain PDB entries (79 to 173 residues) that
PyPI's ``mdanalysistests`` source distribution ships under ``data/dssp/`` with their DSSP strings. It loads with
numpy alone. DSSP's eight states map to three: ``H, G, I -> H`` (helices), ``E, B -> E`` (strands and bridges),
everything else (``T, S, P``, blank, ``-``) ``-> -``. The split is by protein: sorted by name, every fifth chain
(positions 4, 9, 14, ... counted from 0) is a test chain, giving 40 training and 10 test chains.
``python -m tpconv_lite.proteins build-dataset SDIST_OR_DIR`` rebuilds ``tpconv_lite/assets/chains.npz`` bit for
bit (see ``tpconv_lite/assets/README.md``).
"""

from __future__ import annotations

import argparse
import gzip
import io
import re
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

ASSETS = Path(__file__).resolve().parent / "assets"
DATASET_PATH = ASSETS / "chains.npz"
SPLITS = ("train", "test", "all")
DSSP_TO_3 = {"H": "H", "G": "H", "I": "H", "E": "E", "B": "E"}  # every other DSSP state -> "-"
TEST_EVERY = 5  # sorted by name, positions 4, 9, 14, ... are test chains
_SOURCE_PATTERN = re.compile(r"(?:^|/)data/dssp/([0-9][0-9a-z]{3}[A-Za-z0-9])\.pdb\.(gz|dssp)$")
_CIF_SUFFIXES = (".cif", ".mmcif", ".pdbx")
_PEPTIDES = ("PeptideL", "PeptideD")


@dataclass
class Chain:
    """One protein chain at alpha-carbon resolution.

    Attributes:
        name: the PDB id and chain id, e.g. ``"1h4aX"``.
        sequence: one-letter codes, ``X`` for non-standard residues; length n.
        pos: (n, 3) float tensor of CA positions in Å.
        ss: n secondary-structure letters from ``H`` (helix), ``E`` (strand), ``-`` (other), or None.

    >>> Chain("toy", "GA", torch.tensor([[0.0, 0.0, 0.0], [3.8, 0.0, 0.0]]), "H-").pos.shape
    torch.Size([2, 3])
    """

    name: str
    sequence: str
    pos: Tensor
    ss: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.pos, Tensor) or self.pos.dim() != 2 or self.pos.shape[1] != 3:
            shape = tuple(self.pos.shape) if isinstance(self.pos, Tensor) else type(self.pos).__name__
            raise ValueError(f"Chain {self.name!r}: pos must be an (n, 3) tensor, got {shape}")
        if not self.pos.is_floating_point():
            raise ValueError(f"Chain {self.name!r}: pos must be a float tensor, got {self.pos.dtype}")
        n = self.pos.shape[0]
        if n == 0:
            raise ValueError(f"Chain {self.name!r}: no residues")
        if len(self.sequence) != n:
            raise ValueError(f"Chain {self.name!r}: {len(self.sequence)} sequence letters for {n} positions")
        if not torch.isfinite(self.pos).all():
            raise ValueError(f"Chain {self.name!r}: positions are not all finite")
        if self.ss is not None:
            if len(self.ss) != n:
                raise ValueError(f"Chain {self.name!r}: {len(self.ss)} ss letters for {n} residues")
            bad = sorted(set(self.ss) - set("HE-"))
            if bad:
                raise ValueError(f"Chain {self.name!r}: ss letters must be H, E or -, got {bad}")

    def __len__(self) -> int:
        return self.pos.shape[0]


def _gemmi():
    try:
        import gemmi
    except ImportError as err:
        raise ImportError(
            "reading PDB/mmCIF files needs gemmi: pip install tpconv_lite[proteins] (or pip install gemmi)"
        ) from err
    return gemmi


def _stem(label: str) -> str:
    name = Path(label).name
    if name.endswith(".gz"):
        name = name[:-3]
    return name.rsplit(".", 1)[0] if "." in name else name


def _decode(raw: bytes, label: str) -> str:
    """The text of a file's bytes, gunzipped when they start with the gzip magic number."""
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as err:
            raise ValueError(f"{label}: truncated or corrupt gzip data ({err})") from err
    if not raw.strip():
        raise ValueError(f"{label}: the file is empty")
    if b"\x00" in raw:
        raise ValueError(f"{label}: binary data, not a PDB or mmCIF text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _parse(text: str, label: str):
    """A gemmi Structure from PDB or mmCIF text (mmCIF by extension or when the text starts with ``data_``)."""
    gemmi = _gemmi()
    stem = Path(label).name.removesuffix(".gz").lower()
    is_cif = stem.endswith(_CIF_SUFFIXES) or text.lstrip().startswith("data_")
    try:
        if is_cif:
            structure = gemmi.make_structure_from_block(gemmi.cif.read_string(text).sole_block())
            structure.merge_chain_parts()  # as gemmi.read_structure does: one chain per id, polymer then the rest
        else:
            structure = gemmi.read_pdb_string(text)
    except (RuntimeError, ValueError, IndexError) as err:
        kind = "mmCIF" if is_cif else "PDB"
        raise ValueError(f"{label}: cannot be read as {kind}: {err}") from err
    return structure


def _chain_from_text(text: str, label: str, chain: str | None = None) -> Chain:
    gemmi = _gemmi()
    structure = _parse(text, label)
    if len(structure) == 0 or not any(len(ch) for ch in structure[0]):
        raise ValueError(f"{label}: no atoms found")
    structure.remove_alternative_conformations()
    structure.setup_entities()
    model = structure[0]
    kinds = [(ch, ch.get_polymer().check_polymer_type().name) for ch in model]
    proteins = [ch for ch, kind in kinds if kind in _PEPTIDES]
    found = ", ".join(f"{ch.name!r} ({kind})" for ch, kind in kinds)
    if chain is None:
        if not proteins:
            raise ValueError(f"{label}: no protein chain (waters, ligands, nucleic acids do not count); found {found}")
        selected = proteins[0]
    else:
        matches = [(ch, kind) for ch, kind in kinds if ch.name == chain]
        if not matches:
            raise ValueError(f"{label}: no chain {chain!r}; the file holds chains {found}")
        if not any(kind in _PEPTIDES for _, kind in matches):
            raise ValueError(f"{label}: chain {chain!r} is not a protein chain ({matches[0][1]})")
        selected = next(ch for ch, kind in matches if kind in _PEPTIDES)
    residues = [res for res in selected.get_polymer() if res.find_atom("CA", "*") is not None]
    if not residues:
        raise ValueError(f"{label}: chain {selected.name!r} has no residue with a CA atom")
    letters = []
    for res in residues:
        info = gemmi.find_tabulated_residue(res.name)
        standard = info is not None and info.is_amino_acid() and info.is_standard()
        letters.append(info.one_letter_code.upper() if standard else "X")
    xyz = [res.find_atom("CA", "*").pos for res in residues]
    pos = torch.tensor([[p.x, p.y, p.z] for p in xyz], dtype=torch.float32)
    if not torch.isfinite(pos).all():
        raise ValueError(f"{label}: chain {selected.name!r} has non-finite (NaN or infinite) CA coordinates")
    name = _stem(label) + (selected.name if len(proteins) > 1 else "")
    return Chain(name=name, sequence="".join(letters), pos=pos)


def load_chain(path: str | Path, chain: str | None = None) -> Chain:
    """Read one protein chain's CA trace from a PDB or mmCIF file, gzipped or not (needs gemmi).

    Args:
        path: the file; mmCIF when its name ends in ``.cif``/``.mmcif``/``.pdbx`` (``.gz`` optional) or its text
            starts with ``data_``, PDB otherwise.
        chain: a chain id; None takes the first protein chain.

    Returns:
        a :class:`Chain` with ``ss=None`` and float32 positions.

    Raises:
        ValueError: unreadable content, no protein chain, an unknown chain id, non-finite coordinates.
        OSError: a missing path or a directory.
        ImportError: gemmi is not installed.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, expected a PDB or mmCIF file")
    _gemmi()
    return _chain_from_text(_decode(path.read_bytes(), str(path)), str(path), chain)


_THREE = {
    "A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS", "Q": "GLN", "E": "GLU", "G": "GLY", "H": "HIS",
    "I": "ILE", "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE", "P": "PRO", "S": "SER", "T": "THR", "W": "TRP",
    "Y": "TYR", "V": "VAL", "X": "UNK",
}  # fmt: skip


def write_pdb(chain_or_pos: Chain | Tensor, path: str | Path, sequence: str | None = None) -> None:
    """Write a CA-only PDB file (chain ``A``, residues numbered from 1) that molecular viewers open.

    Coordinates are written with 3 decimals, so :func:`load_chain` reads them back within 5e-4 Å.

    Args:
        chain_or_pos: a :class:`Chain`, or (n, 3) positions in Å.
        path: the file to write.
        sequence: n one-letter codes (default: the chain's, else ``X``, written ``UNK``).

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "two.pdb")
    >>> write_pdb(torch.tensor([[0.0, 0.0, 0.0], [3.8, 0.0, 0.0]]), path, "GA")
    >>> open(path).read().splitlines()[1][:26]
    'ATOM      2  CA  ALA A   2'
    """
    if isinstance(chain_or_pos, Chain):
        pos, sequence = chain_or_pos.pos, sequence if sequence is not None else chain_or_pos.sequence
    else:
        pos = chain_or_pos
    if not isinstance(pos, Tensor) or pos.dim() != 2 or pos.shape[1] != 3 or pos.shape[0] == 0:
        shape = tuple(pos.shape) if isinstance(pos, Tensor) else type(pos).__name__
        raise ValueError(f"write_pdb: positions must be an (n, 3) tensor with n >= 1, got {shape}")
    n = pos.shape[0]
    if n > 9999:
        raise ValueError(f"write_pdb: at most 9999 residues fit a PDB file, got {n}")
    sequence = "X" * n if sequence is None else sequence
    if len(sequence) != n:
        raise ValueError(f"write_pdb: {len(sequence)} sequence letters for {n} positions")
    unknown = sorted(set(sequence) - set(_THREE))
    if unknown:
        raise ValueError(f"write_pdb: unknown one-letter codes {unknown}")
    xyz = pos.detach().to("cpu", torch.float64)
    if not torch.isfinite(xyz).all() or xyz.min() < -999.999 or xyz.max() > 9999.999:
        raise ValueError("write_pdb: coordinates must be finite and within [-999.999, 9999.999] Å (PDB columns)")
    lines = []
    for i, (letter, (x, y, z)) in enumerate(zip(sequence, xyz.tolist()), start=1):
        lines.append(
            f"ATOM  {i:5d}  CA  {_THREE[letter]} A{i:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00           C  "
        )
    lines += [f"TER   {n + 1:5d}      {_THREE[sequence[-1]]} A{n:4d}", "END"]
    Path(path).write_text("\n".join(lines) + "\n")


def ss_three_state(dssp: str) -> str:
    """Map a DSSP 8-state string to 3 states: H, G, I -> H; E, B -> E; everything else -> ``-``.

    >>> ss_three_state("HHGGIIEEBTS P-")
    'HHHHHHEEE-----'
    """
    return "".join(DSSP_TO_3.get(letter, "-") for letter in dssp)


def _read_source(source: Path) -> dict[str, dict[str, bytes]]:
    """The ``data/dssp/`` files of an mdanalysistests sdist (``.tar.gz``) or of a folder holding them."""
    files: dict[str, dict[str, bytes]] = {}
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            match = _SOURCE_PATTERN.search(path.as_posix())
            if match and path.is_file():
                files.setdefault(match.group(1), {})[match.group(2)] = path.read_bytes()
    elif source.is_file():
        try:
            with tarfile.open(source) as tar:
                for member in tar.getmembers():
                    match = _SOURCE_PATTERN.search(member.name)
                    if match and member.isfile():
                        files.setdefault(match.group(1), {})[match.group(2)] = tar.extractfile(member).read()
        except tarfile.TarError as err:
            raise ValueError(f"{source}: not a readable source distribution ({err})") from err
    else:
        raise FileNotFoundError(f"{source}: no such file or directory")
    if not files:
        raise ValueError(f"{source}: no data/dssp/XXXXC.pdb.gz files found (expected the mdanalysistests sdist)")
    missing = sorted(name for name, parts in files.items() if set(parts) != {"gz", "dssp"})
    if missing:
        raise ValueError(f"{source}: structures without their DSSP file, or the reverse: {missing}")
    return files


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with fixed zip timestamps, so equal arrays give equal bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())


def build_dataset(source: str | Path, out: str | Path = DATASET_PATH) -> list[Chain]:
    """Build the embedded dataset from the mdanalysistests sdist (or a folder holding its ``data/dssp/``).

    Writes an ``.npz`` with: ``names`` (n_chains,), ``lengths`` (n_chains,) int64, ``pos`` (n_residues, 3)
    float32 in Å, ``sequence`` and ``ss`` (one string each, the chains concatenated), ``split`` (n_chains,) of
    ``train``/``test``. Chains are sorted by name and the file holds no timestamp, so rebuilds are identical.

    Returns:
        the chains, sorted by name, with their ``ss``.
    """
    chains = []
    for name, parts in sorted(_read_source(Path(source)).items()):
        label = f"{source}:{name}.pdb.gz"
        chain = _chain_from_text(_decode(parts["gz"], label), f"{name}.pdb.gz")
        tokens = parts["dssp"].decode("ascii").split()
        if not tokens or len(tokens[0]) != len(chain):
            got = len(tokens[0]) if tokens else 0
            raise ValueError(f"{source}:{name}.pdb.dssp: {got} DSSP letters for {len(chain)} residues")
        chains.append(Chain(name, chain.sequence, chain.pos, ss_three_state(tokens[0])))
    arrays = {
        "names": np.array([c.name for c in chains]),
        "lengths": np.array([len(c) for c in chains], dtype=np.int64),
        "pos": torch.cat([c.pos for c in chains]).numpy().astype(np.float32),
        "sequence": np.array("".join(c.sequence for c in chains)),
        "ss": np.array("".join(c.ss for c in chains)),
        "split": np.array(["test" if i % TEST_EVERY == TEST_EVERY - 1 else "train" for i in range(len(chains))]),
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    _save_npz(Path(out), arrays)
    return chains


_CACHE: dict[Path, list[tuple[str, Chain]]] = {}


def _read_dataset(path: Path) -> list[tuple[str, Chain]]:
    if path not in _CACHE:
        with np.load(path, allow_pickle=False) as data:
            lengths = data["lengths"].tolist()
            starts = np.concatenate([[0], np.cumsum(lengths)]).tolist()
            pos, sequence, ss = torch.from_numpy(data["pos"]), data["sequence"].item(), data["ss"].item()
            _CACHE[path] = [
                (str(split), Chain(str(name), sequence[a:b], pos[a:b], ss[a:b]))
                for name, split, a, b in zip(data["names"], data["split"], starts[:-1], starts[1:])
            ]
    return _CACHE[path]


def load_dataset(split: str = "train") -> list[Chain]:
    """The embedded real chains (numpy alone, no parser): 40 ``"train"``, 10 ``"test"``, or ``"all"`` 50.

    Chains come sorted by name, with float32 CA positions in Å and 3-state ``ss``. The file is read once and
    cached; each call returns fresh copies, so changing them does not change the cache.

    >>> train, test = load_dataset("train"), load_dataset("test")
    >>> len(train), len(test), train[0].name, len(train[0]), train[0].ss[:12]
    (40, 10, '1ahsA', 126, '----E-E-----')
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [
        Chain(chain.name, chain.sequence, chain.pos.clone(), chain.ss)
        for part, chain in _read_dataset(DATASET_PATH)
        if split in ("all", part)
    ]


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m tpconv_lite.proteins build-dataset SDIST_OR_DIR [--out PATH]``."""
    parser = argparse.ArgumentParser(prog="python -m tpconv_lite.proteins", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build-dataset", help="rebuild the embedded dataset from the mdanalysistests sdist")
    build.add_argument("source", help="mdanalysistests-*.tar.gz, or a folder holding its data/dssp/ files")
    build.add_argument("--out", default=str(DATASET_PATH), help=f"output .npz (default: {DATASET_PATH})")
    args = parser.parse_args(argv)
    chains = build_dataset(args.source, args.out)
    n_test = sum(i % TEST_EVERY == TEST_EVERY - 1 for i in range(len(chains)))
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out}: {len(chains)} chains ({len(chains) - n_test} train, {n_test} test), {size} bytes")


if __name__ == "__main__":
    main()
