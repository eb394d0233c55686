"""The card a push writes, read back from the test Hub as a user meets it.

Three pushes to an in-process test Hub (``tests/hub_server.py``): a pre-training folder with
``hfprep push FOLDER --repo-id`` (config ``default``), an SFT folder made with the real Qwen3 tokenizer pushed next
to it as config ``sft``, and a recipe whose ``hub`` section pushes config ``code`` to branch ``dev`` of another repo.
Each card is read back from the Hub, its YAML parsed and its Markdown rendered, and checked: every snippet names
the repo id, the config and the revision, and run against the Hub it loads the pushed rows and the bundled
tokenizer; no path of this machine (the run's temporary folder, the output folders' names, the home folder) is in a
card or a bundled ``recipe.yaml``; each config keeps its own ``hfprep`` block and the repo-wide keys come from the
default config; every relative link and image resolves to a file of the repo at that revision; the bundled recipe
re-runs into the same Parquet bytes; the SFT card's loss note says what the rows hold.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import real_tokenizer
from fetch_tokenizers import family_dir
from markdown_it import MarkdownIt

from hfprep.errors import DataError

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import HubServer

WRITE_TOKEN = "hf_test_write_token_0123456789"
REPO, RECIPE_REPO = "user/cards", "user/recipe-cards"
# The output folders' names are this machine's: none may appear in a pushed card.
OUT = {"default": "out_pre_q7z", "sft": "out_sft_q7z", "code": "out_code_q7z"}
WORDS = ["alpha", "beta", "gamma", "delta", "import", "numpy", "def", "return", "print", "the", "quick", "brown", "fox"]


def _recipes(tokenizer_path: str, chat_file: Path) -> dict[str, dict]:
    return {
        "default": {
            "name": "Pretrain card check",
            "source": {"files": ["docs.jsonl"]},
            "tokenizer": {"name_or_path": tokenizer_path, "backend": "hf"},
            "packing": {"seq_len": 32, "strategy": "no_incomplete", "num_reduce_chunks": 2},
            "splits": {"heldout_fraction": 0.25},
            "output": {"folder": f"out/{OUT['default']}"},
            "hub": {"license": "mit", "tags": ["pretrain-check"]},
        },
        "sft": {
            "name": "SFT card check",
            "source": {"files": [str(chat_file)]},  # outside the recipe's folder: shown by name and sha256
            "tokenizer": {"name_or_path": str(family_dir("qwen3")), "backend": "hf"},
            "tokenize": {"strategy": "sft", "text_column": "messages"},
            "packing": {"seq_len": 96, "strategy": "bfd", "num_reduce_chunks": 2},
            "output": {"folder": f"out/{OUT['sft']}"},
            "hub": {"license": "apache-2.0", "tags": ["sft-check"]},
        },
        "code": {
            "name": "Code card check",
            "source": {"files": ["docs.jsonl"]},
            "tokenizer": {"name_or_path": tokenizer_path, "backend": "hf"},
            "packing": {"seq_len": 16, "strategy": "dense", "num_reduce_chunks": 1},
            "output": {"folder": f"out/{OUT['code']}"},
            "hub": {"repo_id": RECIPE_REPO, "config_name": "code", "revision": "dev"},
        },
    }


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, tokenizer_path):
    """Run three recipes and push them (two CLI pushes to one repo, one recipe-driven push to a branch); the test
    Hub stays up for the tests."""
    from huggingface_hub import constants

    from hfprep.cli import main

    real_tokenizer("qwen3")  # skips (fails under CI) when the real tokenizer files are not fetched
    root = tmp_path_factory.mktemp("pushed-card")
    proj, elsewhere = root / "proj", root / "elsewhere"
    proj.mkdir()
    elsewhere.mkdir()
    docs = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(3 + i % 17)) for i in range(80)]
    (proj / "docs.jsonl").write_text("".join(json.dumps({"content": d}) + "\n" for d in docs))
    chats = [
        {"messages": [{"role": "user", "content": f"question {i}: " + " ".join(WORDS[i % 5 : i % 5 + 4])},
                      {"role": "assistant", "content": f"answer {i}: " + " ".join(WORDS[i % 7 : i % 7 + 5])},
                      {"role": "user", "content": f"and {i}?"},
                      {"role": "assistant", "content": f"done {i}."}]}
        for i in range(30)
    ]
    (elsewhere / "chat.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    recipes = _recipes(tokenizer_path, elsewhere / "chat.jsonl")
    for config, recipe in recipes.items():
        (proj / f"{config}.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    with HubServer(tokens={WRITE_TOKEN: ("user", "write")}) as hub, pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        mp.setattr(constants, "HF_HUB_DISABLE_XET", True)
        mp.setattr(constants, "ENDPOINT", hub.url)
        mp.setenv("HF_TOKEN", WRITE_TOKEN)
        mp.chdir(proj)
        assert main(["run", "default.yaml", "--json"]) == 0
        assert main(["run", "sft.yaml", "--json"]) == 0
        assert main(["push", f"out/{OUT['default']}", "--repo-id", REPO]) == 0
        single = hub.repo_files(REPO)["README.md"].decode()
        assert main(["push", f"out/{OUT['sft']}", "--repo-id", REPO, "--config-name", "sft"]) == 0
        assert main(["run", "code.yaml", "--json"]) == 0  # the recipe names the repo, config and branch: it pushes
        yield {
            "hub": hub, "root": root, "proj": proj, "elsewhere": elsewhere, "recipes": recipes, "single": single,
            "tokenizer_path": tokenizer_path,
        }


# Where each config was pushed: (repo, revision, the repo folder of its other files).
WHERE = {"default": (REPO, "main", ""), "sft": (REPO, "main", "sft/"), "code": (RECIPE_REPO, "dev", "code/")}


def card(pushed, config: str) -> str:
    repo, revision, _ = WHERE[config]
    return pushed["hub"].repo_files(repo, revision=revision)["README.md"].decode()


def front_matter(text: str) -> dict:
    return yaml.safe_load(text.split("---\n")[1])


def section(text: str, config: str) -> str:
    """The Markdown of one config's section of a pushed card."""
    m = re.search(rf"<!-- hfprep:begin config={config} -->\n(.*?)\n<!-- hfprep:end config={config} -->", text, re.S)
    assert m is not None, f"no section for config {config!r}"
    return m[1]


def python_blocks(markdown: str) -> list[str]:
    """The code of every ```python block, as a Markdown renderer sees them."""
    return [t.content for t in MarkdownIt("commonmark").parse(markdown) if t.type == "fence" and t.info == "python"]


def local_rows(pushed, config: str) -> dict[str, int]:
    """Rows per split of a local output folder, from the Parquet footers (independent of any card)."""
    folder = pushed["proj"] / "out" / OUT[config]
    rows: dict[str, int] = {}
    for shard in sorted((folder / "data").glob("*.parquet")):
        split = shard.name.rsplit("-", 3)[0]
        rows[split] = rows.get(split, 0) + pq.ParquetFile(shard).metadata.num_rows
    return dict(sorted(rows.items(), key=lambda kv: kv[0] != "train"))  # the recipe's order: train, then held out


def test_snippets_name_the_repo_id_config_and_revision(pushed):
    # Hand-written: what a user types for each config, and where the bundled tokenizer lies in the repo.
    expected = {
        "default": ('ds = load_dataset("user/cards")', 'train = load_dataset("user/cards", split="train")',
                    'files = snapshot_download("user/cards", repo_type="dataset", allow_patterns="tokenizer/*")',
                    'tokenizer = AutoTokenizer.from_pretrained(files, subfolder="tokenizer")'),
        "sft": ('ds = load_dataset("user/cards", "sft")', 'train = load_dataset("user/cards", "sft", split="train")',
                'files = snapshot_download("user/cards", repo_type="dataset", allow_patterns="sft/tokenizer/*")',
                'tokenizer = AutoTokenizer.from_pretrained(files, subfolder="sft/tokenizer")'),
        "code": ('ds = load_dataset("user/recipe-cards", "code", revision="dev")',
                 'train = load_dataset("user/recipe-cards", "code", split="train", revision="dev")',
                 'files = snapshot_download("user/recipe-cards", repo_type="dataset", allow_patterns="code/tokenizer/*",'
                 ' revision="dev")',
                 'tokenizer = AutoTokenizer.from_pretrained(files, subfolder="code/tokenizer")'),
    }
    cards = {"single": pushed["single"], **{c: card(pushed, c) for c in WHERE}}
    for name, text in cards.items():
        config = "default" if name == "single" else name
        load, train = python_blocks(section(text, config))
        ds_line, train_line, fetch_line, tok_line = expected[config]
        assert ds_line in load.splitlines() and fetch_line in load.splitlines()
        assert tok_line + "  # the tokenizer that made the rows" in load.splitlines()
        assert train_line in train.splitlines()
        rows = ", ".join(f"{s}: {n:,} rows" for s, n in local_rows(pushed, config).items())
        assert f"print(ds)  # {rows}" in load.splitlines()
    assert "config=sft" not in pushed["single"]  # the first push's card: one config only
    assert "Config **`sft`** of this repository: its rows are under `data/sft/`, its other files under `sft/`." in \
        section(cards["sft"], "sft")
    assert "Config **`" not in section(cards["default"], "default")


RUN_SNIPPETS = textwrap.dedent(
    """
    import hashlib, json, sys
    out = {}
    for name, code in json.loads(sys.argv[1]).items():
        ns = {}
        exec(code, ns)
        got = {}
        if "ds" in ns:
            got["rows"] = {split: ns["ds"][split].to_list() for split in ns["ds"]}
        if "train" in ns:
            got["train"] = ns["train"].to_list()
        if "tokenizer" in ns:
            vocab = sorted(ns["tokenizer"].get_vocab().items())
            got["vocab"] = hashlib.sha256(json.dumps(vocab).encode()).hexdigest()
        out[name] = got
    print("RESULT " + json.dumps(out))
    """
)


def test_snippets_run_against_the_hub_and_load_the_pushed_rows(pushed, tmp_path):
    """The card's own code, executed as a user would (a fresh process pointed at the test Hub)."""
    from transformers import AutoTokenizer

    codes = {}
    for config in WHERE:
        load, train = python_blocks(section(card(pushed, config), config))
        codes[f"{config}/load"] = load
        lines = train.splitlines()  # up to the dataset: the Trainer needs a real model ("your-model")
        codes[f"{config}/train"] = "\n".join(lines[: next(i for i, x in enumerate(lines) if x.startswith("train =")) + 1])
    env = pushed["hub"].client_env(dict(os.environ), WRITE_TOKEN, str(tmp_path / "hf_home"))
    proc = subprocess.run([sys.executable, "-c", RUN_SNIPPETS, json.dumps(codes)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    for config in WHERE:
        folder = pushed["proj"] / "out" / OUT[config]
        expected = {
            split: [r for s in sorted((folder / "data").glob(f"{split}-*.parquet")) for r in pq.read_table(s).to_pylist()]
            for split in local_rows(pushed, config)
        }
        assert got[f"{config}/load"]["rows"] == expected
        assert got[f"{config}/train"]["train"] == expected["train"]
        vocab = sorted(AutoTokenizer.from_pretrained(str(folder / "tokenizer")).get_vocab().items())
        assert got[f"{config}/load"]["vocab"] == hashlib.sha256(json.dumps(vocab).encode()).hexdigest()


ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[\w.~-]+/)+[\w.~-]*")


def test_no_path_of_this_machine_in_pushed_cards_or_recipes(pushed):
    root = pushed["root"]
    forbidden = [
        str(root), root.name, str(pushed["proj"]), *OUT.values(), str(Path.home()), tempfile.gettempdir(),
        str(Path(pushed["tokenizer_path"])), Path(pushed["tokenizer_path"]).name, str(family_dir("qwen3")),
        family_dir("qwen3").parent.name, os.getcwd(),
    ]
    texts = {"first push: README.md": pushed["single"]}
    for repo, revision in ((REPO, "main"), (RECIPE_REPO, "dev")):
        files = pushed["hub"].repo_files(repo, revision=revision)
        texts |= {f"{repo}@{revision}: {p}": files[p].decode() for p in files if p.endswith(("README.md", "recipe.yaml"))}
    assert len(texts) == 6  # three cards, recipe.yaml of default, sft and code
    for where, text in texts.items():
        for local in forbidden:
            assert local not in text, (where, local)
        assert ABSOLUTE_PATH.findall(text) == [], where


def test_each_config_keeps_its_own_metadata_and_the_default_speaks_for_the_repo(pushed):
    meta = front_matter(card(pushed, "default"))
    recipes = pushed["recipes"]
    blocks = meta["hfprep"]["configs"]
    assert list(blocks) == ["default", "sft"]
    for config, block in blocks.items():
        recipe = recipes[config]
        assert (block["strategy"], block["seq_len"], block["packing"]) == (
            recipe.get("tokenize", {}).get("strategy", "pretrain"), recipe["packing"]["seq_len"],
            recipe["packing"]["strategy"])
        assert {s: v["rows"] for s, v in block["stats"].items()} == local_rows(pushed, config)
        prefix = WHERE[config][2]
        assert {k: block["tokenizer"][k] for k in ("name_or_path", "repo_type", "subfolder", "revision")} == {
            "name_or_path": REPO, "repo_type": "dataset", "subfolder": f"{prefix}tokenizer", "revision": None}
    assert sorted(meta["hfprep"]["pushes"]) == ["default", "sft"]
    info = {i["config_name"]: {s["name"]: s["num_examples"] for s in i["splits"]} for i in meta["dataset_info"]}
    assert info == {c: local_rows(pushed, c) for c in ("default", "sft")}
    # Repo-wide keys: the default config's (the sft push did not replace them); tags gathered from both.
    assert (meta["pretty_name"], meta["license"]) == ("Pretrain card check", "mit")
    assert {"pretrain-check", "sft-check", "sft", "pretrain"} <= set(meta["tags"])
    # Each section names its own config and title.
    text = card(pushed, "default")
    assert section(text, "default").startswith("# Pretrain card check\n")
    assert section(text, "sft").startswith("# SFT card check\n")

    # A repo whose first config is not the default: that config speaks for it; its block is read at its branch.
    code = front_matter(card(pushed, "code"))
    assert list(code["hfprep"]["configs"]) == ["code"] and code["pretty_name"] == "Code card check"
    tok = code["hfprep"]["configs"]["code"]["tokenizer"]
    assert (tok["name_or_path"], tok["subfolder"], tok["revision"]) == (RECIPE_REPO, "code/tokenizer", "dev")


def test_links_and_images_resolve_to_files_of_the_repo(pushed):
    for config, (repo, revision, prefix) in WHERE.items():
        files = pushed["hub"].repo_files(repo, revision=revision)
        body = section(card(pushed, config), config)
        html = MarkdownIt("commonmark").enable("table").render(body)
        targets = re.findall(r'<img src="([^"]+)"', html) + re.findall(r'<a href="([^"]+)"', html)
        assert targets, config
        for target in targets:
            assert not target.startswith(("http://", "https://", "/")), target
            assert target in files, (config, target)  # the repo at that revision holds it
            assert target.startswith(prefix), (config, target)  # and it is this config's own file
        assert f"{prefix}recipe.yaml" in targets and f"{prefix}images/doc_lengths.png" in targets
        assert html.count("<table>") == len(re.findall(r"^\|[-:|]+\|\s*$", body, flags=re.M))


def test_the_bundled_recipe_reruns_into_the_same_parquet(pushed, tmp_path):
    """A user with the same source file downloads the sft config's recipe.yaml and tokenizer, puts the file the
    recipe lists next to them, and re-runs it: the rows are byte-identical to the pushed ones."""
    from hfprep.run import run_recipe

    files = pushed["hub"].repo_files(REPO)
    here = tmp_path / "download"
    for path, content in files.items():
        if path.startswith("sft/") and not path.startswith("sft/images/"):
            (here / path[4:]).parent.mkdir(parents=True, exist_ok=True)
            (here / path[4:]).write_bytes(content)
    recipe = (here / "recipe.yaml").read_text()
    chat = pushed["elsewhere"] / "chat.jsonl"
    assert f"#   chat.jsonl  local file, sha256:{hashlib.sha256(chat.read_bytes()).hexdigest()}" in recipe
    assert yaml.safe_load(recipe)["tokenizer"]["name_or_path"] == "./tokenizer"
    shutil.copy(chat, here / "chat.jsonl")
    run_recipe(here / "recipe.yaml")
    original = pushed["proj"] / "out" / OUT["sft"] / "data"
    rerun = here / "prepared" / "data"
    assert sorted(p.name for p in rerun.iterdir()) == sorted(p.name for p in original.iterdir())
    for shard in original.iterdir():
        assert (rerun / shard.name).read_bytes() == shard.read_bytes()


def test_sft_loss_note_says_what_the_rows_hold(pushed):
    """The note is read off the mask; the rows agree: Qwen3's <|im_start|>assistant header and the empty think block
    get no loss, every assistant turn's <|im_end|> gets loss, the user turns' do not."""
    text = section(card(pushed, "sft"), "sft")
    row = next(line for line in text.splitlines() if line.startswith("| `loss_mask` |"))
    assert row == (
        "| `loss_mask` | list of bool | True where the token counts in the loss (each assistant answer and the "
        "`<\\|im_end\\|>` after it; no loss on system and user turns, on the `<\\|im_start\\|>assistant\\n` that opens "
        "each assistant turn, or on the `<think>\\n\\n</think>\\n\\n` the template writes before the last answer) |"
    )
    tok = real_tokenizer("qwen3")
    start, end, think = (tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<think>"))
    ids, mask = [], []
    for shard in sorted((pushed["proj"] / "out" / OUT["sft"] / "data").glob("*.parquet")):
        t = pq.read_table(shard)
        cols = (t.column(c).to_pylist() for c in ("input_ids", "position_ids", "loss_mask"))
        for row_ids, row_pos, row_mask in zip(*cols):
            # Padding (the eos id <|im_end|> at position 0, no loss) is not text of a turn.
            real = [i for i, p in enumerate(row_pos) if i == 0 or p != 0 or row_mask[i] or row_ids[i] != end]
            ids += [row_ids[i] for i in real]
            mask += [row_mask[i] for i in real]
    assert not any(m for i, m in zip(ids, mask) if i in (start, think))
    ends_with_loss = sum(1 for i, m in zip(ids, mask) if i == end and m)
    assert ends_with_loss == 2 * 30  # two assistant turns per conversation
    assert any(i == end and not m for i, m in zip(ids, mask))  # the user turns' end-of-turn: no loss


def test_push_refuses_a_card_or_recipe_that_names_a_machine_path(pushed, tmp_path):
    from hfprep.output.hub import push_folder

    folder = tmp_path / "copy"
    shutil.copytree(pushed["proj"] / "out" / OUT["default"], folder)
    recipe = folder / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("- docs.jsonl", f"- {Path.home() / 'data' / 'docs.jsonl'}"))
    n = len(pushed["hub"].requests)
    with pytest.raises(DataError, match=r"recipe\.yaml names the local path .*; re-create the folder"):
        push_folder(folder, REPO, token=WRITE_TOKEN, endpoint=pushed["hub"].url)
    assert len(pushed["hub"].requests) == n  # refused before any request


def test_repo_wide_keys_follow_the_default_config_and_blocks_stay_per_config():
    """Hand-worked: the first config speaks for a new repo; the default config takes over when pushed; a later push
    of another config changes only its own block and section."""
    from hfprep.output.hub import merge_card

    sft = "---\npretty_name: SFT\nlicense: other\nlicense_name: custom-x\ntags: [sft]\nhfprep:\n  seq_len: 96\n---\n# SFT\n"
    pre = "---\npretty_name: Pre\nlicense: mit\ntags: [pretrain]\nhfprep:\n  seq_len: 32\n---\n# Pre\n"
    first = front_matter(merge_card(sft, None, config_name="sft"))
    assert (first["pretty_name"], first["license"], first["license_name"]) == ("SFT", "other", "custom-x")
    both = merge_card(pre, merge_card(sft, None, config_name="sft"))
    meta = front_matter(both)
    assert (meta["pretty_name"], meta["license"], "license_name" in meta) == ("Pre", "mit", False)
    assert meta["tags"] == ["sft", "pretrain"]
    assert meta["hfprep"]["configs"] == {"default": {"seq_len": 32}, "sft": {"seq_len": 96}}
    again = merge_card(sft.replace("96", "128").replace("# SFT", "# SFT v2"), both, config_name="sft")
    meta = front_matter(again)
    assert (meta["pretty_name"], meta["license"]) == ("Pre", "mit")
    assert meta["hfprep"]["configs"] == {"default": {"seq_len": 32}, "sft": {"seq_len": 128}}
    assert section(again, "sft") == "# SFT v2" and section(again, "default") == "# Pre"


def test_a_kd_cache_card_keeps_its_block_per_config(tmp_path):
    from hfprep.kd.readers import read_card_meta
    from hfprep.output.hub import merge_card

    kd = "---\ntags: [kd-cache]\nhfprep_kd:\n  k: 8\n  temperature: 1.0\n---\n# KD\n"
    pushed_card = merge_card(kd, None, config_name="teacher-a")
    assert front_matter(pushed_card)["hfprep_kd"] == {"configs": {"teacher-a": {"k": 8, "temperature": 1.0}}}
    for text in (kd, pushed_card):  # a cache folder's card, and one read back from the Hub
        (tmp_path / "README.md").write_text(text)
        assert read_card_meta(tmp_path) == {"k": 8, "temperature": 1.0}


def test_validate_and_inspect_read_the_per_config_and_the_older_single_block(pushed, tmp_path):
    """A card whose hfprep block is keyed per config (a pushed card's layout) and one with the single block of cards
    pushed before (naming its config): validate and inspect read the default config's block, as from the folder's
    own card. The sft decoy has another seq_len: reading it would make every row a violation."""
    from hfprep.output.inspect_cmd import inspect_folder
    from hfprep.output.validate import validate_folder

    src = pushed["proj"] / "out" / OUT["default"]
    text = (src / "README.md").read_text()
    meta, body = yaml.safe_load(text.split("---\n")[1]), text.split("---\n", 2)[2]
    block = meta["hfprep"]
    layouts = {
        "keyed": {"configs": {"sft": {**block, "seq_len": 999}, "default": block}, "pushes": {"default": {"id": "x"}}},
        "older": {**block, "config_name": "default", "pushes": {"default": {"id": "x"}}},
    }
    baseline = validate_folder(src)
    assert baseline.ok
    for name, hf in layouts.items():
        folder = tmp_path / name
        shutil.copytree(src, folder)
        (folder / "README.md").write_text("---\n" + yaml.safe_dump({**meta, "hfprep": hf}, sort_keys=False) + "---\n" + body)
        report = validate_folder(folder)
        assert report.ok and report.stats == baseline.stats, (name, report.violations[:3])
        assert f"seq_len {block['seq_len']}," in inspect_folder(folder)["text"]
