"""Tests of tpconv_lite.proteins: the gemmi loader and its bad inputs, the PDB writer, the embedded dataset.

Tests on real files and the rebuild of the dataset need PyPI's ``mdanalysistests`` source distribution: set
``TPCONV_MDANALYSISTESTS_SDIST`` to the ``.tar.gz`` or to its unpacked folder, e.g.

    pip download --no-deps --no-binary :all: mdanalysistests==2.11.0 -d /tmp/mdat
    TPCONV_MDANALYSISTESTS_SDIST=/tmp/mdat/mdanalysistests-2.11.0.tar.gz python -m pytest tests/test_proteins.py
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tpconv_lite import proteins
from tpconv_lite.proteins import DATASET_PATH, Chain, build_dataset, load_chain, load_dataset, write_pdb

HAS_GEMMI = True
try:
    import gemmi
except ImportError:
    HAS_GEMMI = False
needs_gemmi = pytest.mark.skipif(not HAS_GEMMI, reason="gemmi is not installed (pip install tpconv_lite[proteins])")

SDIST_ENV = "TPCONV_MDANALYSISTESTS_SDIST"


@pytest.fixture(scope="session")
def sdist() -> Path:
    """The mdanalysistests sdist (tarball or folder) named by the environment, or a skip."""
    source = os.environ.get(SDIST_ENV)
    if not source or not Path(source).exists():
        pytest.skip(f"the mdanalysistests sdist is not at hand: set {SDIST_ENV} to its .tar.gz or unpacked folder")
    return Path(source)


@pytest.fixture(scope="session")
def mdat(sdist, tmp_path_factory):
    """A function giving the path of one file of MDAnalysisTests/data/ (extracted from the tarball if need be)."""
    out = tmp_path_factory.mktemp("mdat")

    def get(name: str) -> Path:
        if sdist.is_dir():
            found = sorted(sdist.rglob(f"MDAnalysisTests/data/{name}"))
            if not found:
                pytest.skip(f"{name} is not in {sdist}")
            return found[0]
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.endswith(f"MDAnalysisTests/data/{name}")]
            if not members:
                pytest.skip(f"{name} is not in {sdist}")
            target = out / Path(name).name
            target.write_bytes(tar.extractfile(members[0]).read())
            return target

    return get


def atom(serial, name, resname, chain, resseq, xyz, element="C", het=False, altloc=" ", occupancy=1.0) -> str:
    """One PDB ATOM/HETATM record, columns as the format defines them."""
    record = "HETATM" if het else "ATOM"
    name = f" {name:<3}" if len(name) < 4 else name
    x, y, z = xyz
    return (
        f"{record:<6}{serial:5d} {name:<4}{altloc}{resname:>3} {chain}{resseq:4d}    "
        f"{x:8.3f}{y:8.3f}{z:8.3f}{occupancy:6.2f}{0.0:6.2f}          {element:>2}"
    )


def peptide_lines(chain="A", resnames=("ALA", "GLY", "SER", "LYS"), start_serial=1, shift=0.0) -> list[str]:
    """A short straight peptide with N, CA, C, O atoms, CAs 3.8 Å apart along x."""
    lines, serial = [], start_serial
    for k, resname in enumerate(resnames, start=1):
        x = 3.8 * k + shift
        for name, dx, dy, element in (("N", -1.2, 0.5, "N"), ("CA", 0.0, 0.0, "C"), ("C", 1.2, 0.5, "C"),
                                      ("O", 1.3, 1.7, "O")):  # fmt: skip
            lines.append(atom(serial, name, resname, chain, k, (x + dx, dy, 0.0), element))
            serial += 1
    return lines


def write(tmp_path: Path, name: str, lines: list[str] | str) -> Path:
    path = tmp_path / name
    path.write_text(lines if isinstance(lines, str) else "\n".join(lines) + "\nEND\n")
    return path


# ---------------------------------------------------------------- Chain


def test_chain_validates_its_fields():
    pos = torch.zeros(3, 3)
    assert len(Chain("c", "AGS", pos, "H-E")) == 3
    with pytest.raises(ValueError, match="2 sequence letters for 3 positions"):
        Chain("c", "AG", pos)
    with pytest.raises(ValueError, match=r"\(n, 3\) tensor"):
        Chain("c", "AGS", torch.zeros(3, 2))
    with pytest.raises(ValueError, match="not all finite"):
        Chain("c", "AGS", torch.tensor([[0.0, 0, 0], [1, float("nan"), 0], [2, 0, 0]]))
    with pytest.raises(ValueError, match="ss letters must be H, E or -"):
        Chain("c", "AGS", pos, "HGE")
    with pytest.raises(ValueError, match="2 ss letters"):
        Chain("c", "AGS", pos, "HE")
    with pytest.raises(ValueError, match="no residues"):
        Chain("c", "", torch.zeros(0, 3))
    with pytest.raises(ValueError, match="float tensor"):
        Chain("c", "AGS", torch.zeros(3, 3, dtype=torch.long))


# ---------------------------------------------------------------- load_chain: small files written here


@needs_gemmi
def test_load_chain_reads_a_peptide_and_skips_ligands_and_waters(tmp_path):
    lines = peptide_lines(resnames=("ALA", "MSE", "SER", "LYS"))
    lines += [atom(17, "C1", "LIG", "A", 101, (0.0, 5.0, 0.0), het=True),
              atom(18, "O", "HOH", "A", 201, (0.0, 8.0, 0.0), "O", het=True),
              atom(19, "CA", "CA", "A", 301, (0.0, 9.0, 0.0), "CA", het=True)]  # fmt: skip  # a calcium ion
    chain = load_chain(write(tmp_path, "1abcA.pdb", lines))
    assert chain.name == "1abcA" and chain.sequence == "AXSK" and chain.ss is None
    assert chain.pos.dtype == torch.float32
    torch.testing.assert_close(chain.pos[:, 0], torch.tensor([3.8, 7.6, 11.4, 15.2]))


@needs_gemmi
def test_load_chain_gzip_and_first_model_of_an_ensemble(tmp_path):
    model_1 = ["MODEL        1", *peptide_lines(), "ENDMDL"]
    model_2 = ["MODEL        2", *peptide_lines(shift=10.0), "ENDMDL"]
    path = tmp_path / "ens.pdb.gz"
    path.write_bytes(gzip.compress(("\n".join(model_1 + model_2) + "\nEND\n").encode()))
    chain = load_chain(path)
    assert chain.name == "ens" and len(chain) == 4
    assert float(chain.pos[0, 0]) == pytest.approx(3.8)


@needs_gemmi
def test_load_chain_takes_the_first_alternative_conformation(tmp_path):
    lines = peptide_lines()
    ca = lines[5]  # the CA of residue 2
    lines[5:6] = [ca[:16] + "A" + ca[17:54] + "  0.60" + ca[60:], ca[:16] + "B" + ca[17:30] + "  99.000" + ca[38:54]
                  + "  0.40" + ca[60:]]  # fmt: skip
    chain = load_chain(write(tmp_path, "alt.pdb", lines))
    assert len(chain) == 4 and float(chain.pos[1, 0]) == pytest.approx(7.6)


@needs_gemmi
def test_load_chain_multichain_mmcif_written_by_gemmi(tmp_path):
    text = "\n".join(peptide_lines("A") + peptide_lines("B", ("GLY", "GLY", "TRP"), 20, shift=50.0))
    structure = gemmi.read_pdb_string(text + "\nEND\n")
    structure.setup_entities()
    path = tmp_path / "2xyz.cif"
    structure.make_mmcif_document().write_file(str(path))
    first = load_chain(path)
    assert first.name == "2xyzA" and first.sequence == "AGSK"
    second = load_chain(path, chain="B")
    assert second.name == "2xyzB" and second.sequence == "GGW"
    with pytest.raises(ValueError, match=r"2xyz\.cif: no chain 'Q'; the file holds chains 'A' \(PeptideL\), 'B'"):
        load_chain(path, chain="Q")


BAD_TEXTS = {
    "text with no atoms": ("noatoms.pdb", "HEADER    NOTHING\nREMARK   1 just words\nEND\n", "no atoms found"),
    "only water": (
        "water.pdb",
        "\n".join(atom(k, "O", "HOH", "W", k, (3.0 * k, 0, 0), "O", het=True) for k in range(1, 4)) + "\nEND\n",
        "no protein chain",
    ),
    "only ligands": (
        "ligand.pdb",
        "\n".join(atom(k, f"C{k}", "LIG", "A", 1, (1.5 * k, 0, 0), het=True) for k in range(1, 4)) + "\nEND\n",
        "no protein chain",
    ),
    "only nucleic acids": (
        "dna.pdb",
        "\n".join(
            atom(3 * k + j, name, resname, "A", k + 1, (6.0 * k + j, 0, 0), element)
            for k, resname in enumerate(("DA", "DT", "DG", "DC"))
            for j, (name, element) in enumerate((("P", "P"), ("C1'", "C"), ("N9", "N")))
        )
        + "\nEND\n",
        r"no protein chain .*Dna",
    ),
    "broken mmCIF": (
        "broken.cif",
        "data_x\nloop_\n_atom_site.id\n_atom_site.Cartn_x\n1 2 3\n",
        "cannot be read as mmCIF",
    ),
    "duplicated MODEL records": (
        "dup.pdb",
        "\n".join(["MODEL        1", *peptide_lines(), "ENDMDL", "MODEL        1", *peptide_lines(), "ENDMDL", "END"]),
        "duplicate MODEL",
    ),
    "NaN coordinates": (
        "nan.pdb",
        "\n".join(peptide_lines()).replace("   7.600", "     nan") + "\nEND\n",
        "non-finite",
    ),
}


@needs_gemmi
@pytest.mark.parametrize("case", sorted(BAD_TEXTS))
def test_load_chain_bad_text_names_the_file_and_the_problem(tmp_path, case):
    name, text, message = BAD_TEXTS[case]
    path = write(tmp_path, name, text)
    with pytest.raises(ValueError, match=message) as info:
        load_chain(path)
    assert str(path) in str(info.value)


@needs_gemmi
def test_load_chain_empty_binary_and_truncated_gzip(tmp_path):
    empty = tmp_path / "empty.pdb"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pdb: the file is empty"):
        load_chain(empty)
    blank = tmp_path / "blank.pdb"
    blank.write_text("\n  \n")
    with pytest.raises(ValueError, match="blank.pdb: the file is empty"):
        load_chain(blank)
    binary = tmp_path / "binary.pdb"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="binary.pdb: binary data"):
        load_chain(binary)
    whole = gzip.compress(("\n".join(peptide_lines()) + "\nEND\n").encode())
    truncated = tmp_path / "cut.pdb.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="cut.pdb.gz: truncated or corrupt gzip"):
        load_chain(truncated)


@needs_gemmi
def test_load_chain_chain_that_is_not_a_protein(tmp_path):
    lines = peptide_lines("A") + [atom(40, "O", "HOH", "W", 1, (0, 9.0, 0), "O", het=True)]
    with pytest.raises(ValueError, match="chain 'W' is not a protein chain"):
        load_chain(write(tmp_path, "mixed.pdb", lines), chain="W")


def test_load_chain_file_system_problems(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_chain(tmp_path / "missing.pdb")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load_chain(tmp_path)
    assert issubclass(FileNotFoundError, OSError) and issubclass(IsADirectoryError, OSError)


def test_load_chain_without_gemmi_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gemmi", None)  # makes `import gemmi` raise ImportError
    path = write(tmp_path, "x.pdb", peptide_lines())
    with pytest.raises(ImportError, match=r"pip install tpconv_lite\[proteins\]"):
        load_chain(path)


# ---------------------------------------------------------------- load_chain: real files of mdanalysistests


@needs_gemmi
def test_real_multichain_mmcif_with_ligands(mdat):
    path = mdat("mmcif/1BD2.cif.gz")  # a T-cell receptor / MHC complex: five protein chains, waters, ligands
    first = load_chain(path)
    assert first.name == "1BD2A" and len(first) == 275
    peptide = load_chain(path, chain="C")  # the 9-residue peptide
    assert len(peptide) == 9 and set(peptide.sequence) <= set("ACDEFGHIKLMNPQRSTVWYX")
    assert 3.6 < float((peptide.pos[1:] - peptide.pos[:-1]).norm(dim=1).median()) < 4.0
    with pytest.raises(ValueError, match="no chain 'Z'; the file holds chains 'A'"):
        load_chain(path, chain="Z")


@needs_gemmi
def test_real_pdb_with_a_ligand(mdat):
    chain = load_chain(mdat("1hvr.pdb"))  # HIV protease with an inhibitor in the file
    assert chain.name == "1hvrA" and len(chain) == 99  # the two 99-residue protease chains; the inhibitor never counts
    assert len(load_chain(mdat("1hvr.pdb"), chain="B")) == 99


@needs_gemmi
def test_real_nmr_ensemble_first_model(mdat):
    path = mdat("nmr_neopetrosiamide.pdb")
    assert len(gemmi.read_structure(str(path))) > 1
    chain = load_chain(path)
    first = gemmi.read_structure(str(path))[0]
    ca = [res.find_atom("CA", "*").pos for res in first[0].get_polymer() if res.find_atom("CA", "*")]
    assert len(chain) == len(ca) == 28
    torch.testing.assert_close(chain.pos, torch.tensor([[p.x, p.y, p.z] for p in ca], dtype=torch.float32))


@needs_gemmi
def test_real_files_without_protein(mdat):
    with pytest.raises(ValueError, match="no protein chain"):
        load_chain(mdat("water_methane_acetic-acid_ammonia.pdb"))
    with pytest.raises(ValueError, match="no protein chain"):
        load_chain(mdat("nucl_res.pdb"))


@needs_gemmi
def test_real_invalid_mmcif_still_gives_a_chain_or_a_clear_error(mdat):
    try:
        chain = load_chain(mdat("mmcif/1YJP_invalid.cif.gz"))
    except ValueError as err:
        assert "1YJP_invalid" in str(err)
    else:
        assert len(chain) > 0 and torch.isfinite(chain.pos).all()


# ---------------------------------------------------------------- write_pdb


@needs_gemmi
@pytest.mark.parametrize("name", ["1h4aX", "3a4rA"])
def test_write_pdb_round_trips(tmp_path, name):
    chain = next(c for c in load_dataset("all") if c.name == name)
    path = tmp_path / f"{name}.pdb"
    write_pdb(chain, path)
    back = load_chain(path)
    assert back.sequence == chain.sequence
    assert float((back.pos - chain.pos).abs().max()) < 1e-3
    moved = chain.pos.double() * 1.2345678 - 50.0  # coordinates with more than 3 decimals
    write_pdb(moved, path)
    back = load_chain(path)
    assert back.sequence == "X" * len(chain) and float((back.pos.double() - moved).abs().max()) < 1e-3


def test_write_pdb_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"\(n, 3\) tensor"):
        write_pdb(torch.zeros(4, 2), tmp_path / "a.pdb")
    with pytest.raises(ValueError, match="2 sequence letters for 3 positions"):
        write_pdb(torch.zeros(3, 3), tmp_path / "a.pdb", "AG")
    with pytest.raises(ValueError, match="unknown one-letter codes"):
        write_pdb(torch.zeros(3, 3), tmp_path / "a.pdb", "AG1")
    with pytest.raises(ValueError, match="finite"):
        write_pdb(torch.tensor([[0.0, 0, 0], [1e5, 0, 0]]), tmp_path / "a.pdb")
    assert not (tmp_path / "a.pdb").exists()


# ---------------------------------------------------------------- the embedded dataset


def test_dataset_splits():
    train, test, every = load_dataset("train"), load_dataset("test"), load_dataset("all")
    assert (len(train), len(test), len(every)) == (40, 10, 50)
    names = [c.name for c in every]
    assert names == sorted(names) and len(set(names)) == 50
    assert {c.name for c in train} | {c.name for c in test} == set(names)
    assert not {c.name for c in train} & {c.name for c in test}
    assert [c.name for c in test] == names[4::5]
    assert all(79 <= len(c) <= 173 and set(c.ss) <= set("HE-") and c.pos.dtype == torch.float32 for c in every)
    bonds = torch.cat([(c.pos[1:] - c.pos[:-1]).norm(dim=1) for c in every])
    assert 3.79 < float(bonds.median()) < 3.82 and float(bonds.max()) < 4.2  # no chain breaks
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("validation")


def test_dataset_copies_do_not_touch_the_cache():
    chain = load_dataset("test")[0]
    chain.pos.zero_()
    assert float(load_dataset("test")[0].pos.abs().sum()) > 0


def test_dataset_file_is_small_and_plain_numpy():
    assert DATASET_PATH.stat().st_size < 1_000_000
    with np.load(DATASET_PATH, allow_pickle=False) as data:
        assert sorted(data.files) == ["lengths", "names", "pos", "sequence", "split", "ss"]
        assert int(data["lengths"].sum()) == data["pos"].shape[0] == len(data["sequence"].item())


def test_dataset_loads_with_numpy_alone():
    code = (
        "import sys; sys.modules['gemmi'] = None\n"
        "from tpconv_lite.proteins import load_dataset\n"
        "print(len(load_dataset('all')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "50"


@needs_gemmi
def test_dataset_rebuilds_bit_for_bit(sdist, tmp_path):
    out = tmp_path / "chains.npz"
    proteins.main(["build-dataset", str(sdist), "--out", str(out)])
    assert out.read_bytes() == DATASET_PATH.read_bytes()


@needs_gemmi
def test_dataset_ss_matches_the_dssp_files(sdist, mdat):
    chain = next(c for c in load_dataset("all") if c.name == "1h4aX")
    dssp = mdat("dssp/1h4aX.pdb.dssp").read_text().split()[0]
    assert chain.ss == proteins.ss_three_state(dssp) and len(dssp) == len(chain)
    assert float((load_chain(mdat("dssp/1h4aX.pdb.gz")).pos - chain.pos).abs().max()) == 0.0


def test_build_dataset_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError):
        build_dataset(tmp_path / "missing.tar.gz", tmp_path / "out.npz")
    with pytest.raises(ValueError, match="no data/dssp/"):
        build_dataset(tmp_path, tmp_path / "out.npz")
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(ValueError, match="not a readable source distribution"):
        build_dataset(tmp_path / "junk.tar.gz", tmp_path / "out.npz")
    dssp = tmp_path / "pkg" / "data" / "dssp"
    dssp.mkdir(parents=True)
    (dssp / "1abcA.pdb.gz").write_bytes(gzip.compress(b"END\n"))
    with pytest.raises(ValueError, match=r"without their DSSP file.*1abcA"):
        build_dataset(tmp_path / "pkg", tmp_path / "out.npz")
