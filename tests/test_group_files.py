"""groups.source=files (issue 25): semantic groups made elsewhere, in the authors' two formats (`id,group` text lines
and the JSON list of groups), read by the dataset's own ids; faults strict (one error naming file:line) or lenient
(counted); items of another MovieLens version mapped by title + year; the groups stage fed by the files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from test_llm_compact import tiny_dataset

from lagcl.artifacts import has_table, read_manifest, read_table
from lagcl.config import load_config
from lagcl.errors import ConfigError, DataError
from lagcl.group_files import import_groups, normal_title, title_key, title_year_map

ITEMS = pl.DataFrame({"item": [0, 1, 2, 3, 4], "raw_id": ["10", "11", "12", "13", "14"]},
                     schema={"item": pl.Int32, "raw_id": pl.String})


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def assignment(kg, kind: str = "item") -> dict[int, int]:
    return dict(kg.assignment.select(kind, "group").iter_rows())


def partition(kg, kind: str = "item") -> set[frozenset[int]]:
    """The groups as sets of internal ids: what a file says, whatever the groups' numbers."""
    groups: dict[int, set[int]] = {}
    for i, g in kg.assignment.select(kind, "group").iter_rows():
        groups.setdefault(g, set()).add(i)
    return {frozenset(s) for s in groups.values()}


# --- the two formats ---------------------------------------------------------------------------------------
def test_a_text_file_assigns_each_listed_id_its_group_numbered_by_smallest_member(tmp_path):
    f = write(tmp_path / "item_group.txt", "13,7\n10,7\n\n12,3\n11,9\n")
    kg = import_groups(f, "item", ITEMS, lenient=False)
    # 10 (item 0) and 13 (item 3) share group 7; groups are renumbered 0.. by their smallest internal member
    assert assignment(kg) == {0: 0, 1: 1, 2: 2, 3: 0}
    assert 4 not in assignment(kg)  # an id the file does not list gets no group
    s = kg.stats
    assert (s["source"], s["format"], s["grouped"], s["of"], s["groups"], s["entries"]) == ("files", "text", 4, 5, 3, 4)
    assert kg.partitions.sort("partition_group")["name"].to_list() == ["7", "9", "3"]
    assert kg.similarity.height == 0 and kg.members.height == 0


def test_a_json_file_reads_members_names_characteristics_and_counts_original_groups(tmp_path):
    doc = [{"group_id": "group_1", "group_name": "Noir", "key_characteristics": ["dark", "urban"],
            "reasoning": "...", "members": ["12", "14"], "original_groups": [{"g": 1}, {"g": 2}]},
           {"group_id": "group_2", "members": ["10", 11]}]
    f = write(tmp_path / "item_group.json", json.dumps(doc))
    kg = import_groups(f, "item", ITEMS, lenient=False)
    assert partition(kg) == {frozenset({2, 4}), frozenset({0, 1})}
    rows = {r["name"]: r for r in kg.partitions.to_dicts()}
    assert rows["Noir"]["characteristics"] == "dark; urban" and rows["Noir"]["size"] == 2
    assert rows["group_2"]["group"] == 0  # numbered by smallest member: item 0 is in group_2
    assert (kg.stats["format"], kg.stats["original_groups"], kg.stats["file_groups"]) == ("json", 2, 2)


# --- faults, strict: one error naming the place ------------------------------------------------------------
@pytest.mark.parametrize("text, where, what", [
    ("10,1\n99,1\n", "item_group.txt:2", "1 unknown"),
    ("10,1\n11,2\n10,2\n", "item_group.txt:3", "1 duplicate"),
    ("10,1\n10,1\n", "item_group.txt:2", "1 duplicate"),
    ("10,1\n11,2,3\n", "item_group.txt:2", "1 malformed"),
    ("10,1\n11,abc\n", "item_group.txt:2", "1 malformed"),
    ("item_id,group_id\n10,1\n", "item_group.txt:1", "1 malformed"),
])
def test_a_strict_text_fault_is_one_error_naming_file_and_line(tmp_path, text, where, what):
    f = write(tmp_path / "item_group.txt", text)
    with pytest.raises(DataError) as err:
        import_groups(f, "item", ITEMS, lenient=False)
    msg = str(err.value)
    assert where in msg and what in msg and "groups.lenient=true" in msg


@pytest.mark.parametrize("doc, where", [
    ([{"members": ["10"]}, {"members": ["77"]}], "group 1 (group 1), member 0"),
    ([{"members": ["10"]}, {"members": ["11", "10"]}], "group 1 (group 1), member 1"),
    ([{"members": ["10"]}, {"group_name": "no members"}], "group 1"),
    ([{"members": ["10", {"id": 11}]}], "group 0 (group 0), member 1"),
    ([{"members": ["10"]}, "not a group"], "group 1"),
])
def test_a_strict_json_fault_names_the_group_index_and_member(tmp_path, doc, where):
    f = write(tmp_path / "item_group.json", json.dumps(doc))
    with pytest.raises(DataError, match="item_group.json: " + where.replace("(", r"\(").replace(")", r"\)")):
        import_groups(f, "item", ITEMS, lenient=False)


def test_a_json_file_that_does_not_parse_is_an_error_with_its_line_even_when_lenient(tmp_path):
    f = write(tmp_path / "user_group.json", '[\n {"members": ["10"]},\n {"members": [}\n]')
    with pytest.raises(DataError, match=r"user_group.json:3: not valid JSON"):
        import_groups(f, "item", ITEMS, lenient=True)
    f = write(tmp_path / "g.json", '{"members": ["10"]}')
    with pytest.raises(DataError, match="expected a list of groups"):
        import_groups(f, "item", ITEMS, lenient=True)


# --- faults, lenient: counted per class, the rest used -----------------------------------------------------
def test_lenient_text_faults_are_counted_per_class_and_the_rest_used(tmp_path):
    f = write(tmp_path / "item_group.txt", "10,1\n99,1\n98,2\n11,1\n10,2\n12\n13,x\n14,2\n")
    kg = import_groups(f, "item", ITEMS, lenient=True)
    assert assignment(kg) == {0: 0, 1: 0, 4: 1}
    faults = kg.stats["faults"]
    assert {c: v["count"] for c, v in faults.items()} == {"unknown": 2, "duplicate": 1, "malformed": 2}
    assert faults["unknown"]["first"][0].startswith("item_group.txt:2: item id '99'")
    assert faults["duplicate"]["first"] == ["item_group.txt:5: item '10' was already placed at item_group.txt:1"]


def test_lenient_json_faults_are_counted_and_a_group_without_known_members_is_dropped(tmp_path):
    doc = [{"members": ["10", "10", "11"]}, {"members": ["88", "89"]}, {"name": "x"}, {"members": ["12", None]}]
    kg = import_groups(write(tmp_path / "g.json", json.dumps(doc)), "item", ITEMS, lenient=True)
    assert partition(kg) == {frozenset({0, 1}), frozenset({2})}
    assert kg.stats["groups"] == 2 and kg.stats["file_groups"] == 3
    assert {c: v["count"] for c, v in kg.stats["faults"].items()} == {"unknown": 2, "duplicate": 1, "malformed": 2}


def test_a_file_that_groups_no_entity_of_the_dataset_is_an_error_even_when_lenient(tmp_path):
    with pytest.raises(DataError, match="no item of the dataset got a group"):
        import_groups(write(tmp_path / "g.txt", "500,1\n501,1\n"), "item", ITEMS, lenient=True)


# --- the id map: another MovieLens version's ids by title + year -------------------------------------------
def test_titles_are_compared_without_articles_punctuation_accents_case_or_alternate_titles():
    assert normal_title("American President, The") == normal_title("The American President") == "americanpresident"
    assert normal_title("Double vie de Véronique, La (Double Vie de Veronique, La)") == normal_title(
        "Double Vie de Veronique")
    assert normal_title("Star Wars: Episode IV") == normal_title("star wars  episode iv")
    assert title_key("Toy Story (1995)", None) == ("toystory", 1995) == title_key("Toy Story", "1995")
    assert title_key("unknown", None) is None


def ml1m_movies(path: Path) -> Path:
    """An ML-1M-style movies.dat (id::Title (Year)::Genres, latin-1)."""
    return write(path, "\n".join([
        "1::Toy Story (1995)::Animation|Children's|Comedy",
        "11::American President, The (1995)::Comedy|Drama|Romance",
        "24::Double vie de Véronique, La (1991)::Drama",
        "50::Usual Suspects, The (1995)::Crime|Thriller",
        "3000::Princess Mononoke, The (Mononoke Hime) (1997)::Action",  # not in our items
        "700::Twin (1990)::Drama", "701::Twin, The (1990)::Drama",  # the same key twice: ambiguous
    ]) + "\n", encoding="latin-1")


OUR_MOVIES = pl.DataFrame({"item": [0, 1, 2, 3, 4, 5], "raw_id": ["1", "415", "1005", "12", "900", "901"],
                           "title": ["Toy Story", "American President, The", "Double vie de Véronique, La (Double "
                                     "Vie de Véronique, La)", "Usual Suspects, The", "Twin", "Fargo"],
                           "year": ["1995", "1995", "1991", "1995", "1990", "1996"]},
                          schema={"item": pl.Int32, "raw_id": pl.String, "title": pl.String, "year": pl.String})


def test_the_title_year_map_matches_another_versions_ids_and_reports_the_match_rate(tmp_path):
    m = title_year_map(ml1m_movies(tmp_path / "movies.dat"), OUR_MOVIES)
    assert m.to_ours == {"1": "1", "11": "415", "24": "1005", "50": "12"}
    assert (m.stats["matched"], m.stats["items"], m.stats["match_rate_of_items"]) == (4, 6, round(4 / 6, 4))
    assert m.stats["ambiguous_other"] == 2


def test_mapped_item_groups_use_our_items_and_unmatched_items_get_no_group(tmp_path):
    m = title_year_map(ml1m_movies(tmp_path / "movies.dat"), OUR_MOVIES)
    f = write(tmp_path / "item_group.txt", "1,0\n11,0\n24,1\n50,1\n3000,1\n700,2\n")
    kg = import_groups(f, "item", OUR_MOVIES, lenient=False, id_map=m)
    assert partition(kg) == {frozenset({0, 1}), frozenset({2, 3})}  # 3000 and 700 match nothing: no fault
    mapping = kg.stats["mapping"]
    assert (mapping["entries_unmatched"], mapping["match_rate_of_entries"]) == (2, round(4 / 6, 4))
    with pytest.raises(DataError, match=r"item_group.txt:2: item id '9999' is not in movies.dat"):
        import_groups(write(tmp_path / "item_group.txt", "1,0\n9999,0\n"), "item", OUR_MOVIES, False, m)


# --- the groups stage fed by the files ---------------------------------------------------------------------
def stage_config(tmp_path: Path, *overrides: str, stages_off=("augment", "control", "gcl", "rerank", "evaluate")):
    data = tiny_dataset(tmp_path / "data")
    return load_config(data="my-csv", overrides=[
        f"cache_dir={tmp_path / 'cache'}", f"data.path={data}", "data.kcore=1", "data.name=tiny",
        *[f"pipeline.stages.{s}=false" for s in stages_off], *overrides])


def tiny_files(folder: Path) -> tuple[Path, Path]:
    """The tiny dataset's users ("user 0".."user 11") by u % 3 as JSON, its items by i % 2 as text ("item 0".."item
    9" but "item 8", which only has a rating at or below the threshold and so is not one of prepare's items)."""
    folder.mkdir(parents=True, exist_ok=True)
    users = [{"group_id": f"group_{r}", "group_name": f"users {r}",
              "members": [f"user {u}" for u in range(12) if u % 3 == r]} for r in range(3)]
    user_file = write(folder / "user_group.json", json.dumps(users))
    item_file = write(folder / "item_group.txt", "".join(f"item {i},{i % 2}\n" for i in range(10) if i != 8))
    return user_file, item_file


def run_groups(cfg):
    from tasks import groups as groups_stage
    from tasks import prepare as prepare_stage
    from tasks.base import make_plan

    plan = make_plan(cfg)
    prepare_stage.run(plan)
    return plan, Path(groups_stage.run(plan).path)


def test_a_run_with_groups_from_files_uses_them_and_needs_no_profiles(tmp_path):
    user_file, item_file = tiny_files(tmp_path / "llm")
    cfg = stage_config(tmp_path, "groups.source=files", f"groups.user_file={user_file}",
                       f"groups.item_file={item_file}", "pipeline.stages.profiles=false")
    plan, folder = run_groups(cfg)
    items = plan.store.read_table("prepare", plan.fingerprints["prepare"], "items")
    raw = dict(items.select("item", "raw_id").iter_rows())
    got = {raw[i]: g for i, g in read_table(folder, "item_groups").iter_rows()}
    assert got == {f"item {i}": got["item 0"] if i % 2 == 0 else got["item 1"] for i in range(10) if i != 8}
    assert got["item 0"] != got["item 1"]
    users = plan.store.read_table("prepare", plan.fingerprints["prepare"], "users")
    raw_u = dict(users.select("user", "raw_id").iter_rows())
    ug = read_table(folder, "user_groups")
    by_group: dict[int, set[int]] = {}
    for u, g in ug.iter_rows():
        by_group.setdefault(g, set()).add(int(raw_u[u].split()[1]) % 3)
    assert ug.height == 12 and len(by_group) == 3 and all(len(v) == 1 for v in by_group.values())
    meta = read_manifest(folder)["meta"]
    assert (meta["source"], meta["engine"], meta["failed"]) == ("files", "files", 0)
    assert (meta["item"]["grouped"], meta["item"]["of"], meta["user"]["grouped"], meta["user"]["groups"]) == (9, 9, 12, 3)
    assert meta["files"]["item"] == {"file": "item_group.txt", "sha256": meta["item"]["sha256"], "format": "text"}
    assert all(has_table(folder, t) for t in ("group_partitions", "group_similarity", "group_members"))

    from tasks.groups import source_label

    label = source_label(meta)
    assert label.startswith("files (user user_group.json sha ") and f"item item_group.txt sha {meta['item']['sha256'][:8]}" in label


def fingerprint(cfg) -> str:
    from tasks.base import make_plan

    return make_plan(cfg).fingerprints["groups"]


def test_the_fingerprint_follows_the_files_contents_not_their_paths(tmp_path):
    user_file, item_file = tiny_files(tmp_path / "a")
    base = ["groups.source=files", f"groups.user_file={user_file}"]
    fp = fingerprint(stage_config(tmp_path, *base, f"groups.item_file={item_file}"))
    moved = tmp_path / "b" / "other_name.txt"
    moved.parent.mkdir()
    shutil.copyfile(item_file, moved)
    assert fingerprint(stage_config(tmp_path, *base, f"groups.item_file={moved}")) == fp
    write(moved, moved.read_text() + "item 9,0\n")
    assert fingerprint(stage_config(tmp_path, *base, f"groups.item_file={moved}")) != fp
    assert fingerprint(stage_config(tmp_path, *base, f"groups.item_file={item_file}", "groups.lenient=true")) != fp
    # with both files the engine and the profiles take no part
    assert fingerprint(stage_config(tmp_path, *base, f"groups.item_file={item_file}", "profiles.history=5",
                                    "groups.batch_size=7")) == fp


def test_with_one_file_the_other_kind_is_grouped_by_the_engine_from_the_profiles(tmp_path):
    _, item_file = tiny_files(tmp_path / "llm")
    base = ["groups.source=files", f"groups.item_file={item_file}"]
    fp = fingerprint(stage_config(tmp_path, *base))
    assert fingerprint(stage_config(tmp_path, *base, "profiles.history=5")) != fp  # users come from the profiles
    with pytest.raises(ConfigError, match="stage 'groups' needs stage"):
        fingerprint(stage_config(tmp_path, *base, "pipeline.stages.profiles=false"))


def test_engine_runs_keep_their_fingerprint_whatever_the_file_settings_say(tmp_path):
    user_file, _ = tiny_files(tmp_path / "llm")
    fp = fingerprint(stage_config(tmp_path))
    assert fingerprint(stage_config(tmp_path, f"groups.user_file={user_file}", "groups.lenient=true")) == fp
    assert load_config().groups.hash_payload() == {"batch_size": 100, "target_group_size": 20, "tau_sim": 0.8,
                                                   "candidate_pairs_k": 5}


def test_a_named_file_that_is_missing_is_a_config_error_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="groups.item_file nowhere.txt does not exist"):
        fingerprint(stage_config(tmp_path, "groups.source=files", "groups.item_file=nowhere.txt"))


def test_a_strict_fault_in_the_stage_writes_no_table_and_keeps_prepare(tmp_path):
    user_file, item_file = tiny_files(tmp_path / "llm")
    write(item_file, item_file.read_text() + "item 42,1\n")
    cfg = stage_config(tmp_path, "groups.source=files", f"groups.user_file={user_file}",
                       f"groups.item_file={item_file}", "pipeline.stages.profiles=false")
    from tasks import groups as groups_stage
    from tasks import prepare as prepare_stage
    from tasks.base import make_plan

    plan = make_plan(cfg)
    prepare_stage.run(plan)
    with pytest.raises(DataError, match=r"item_group.txt:10: item id 'item 42' is not one of the dataset's 9 items"):
        groups_stage.run(plan)
    folder = plan.store.stage_path("groups", plan.fingerprints["groups"])
    assert read_manifest(folder) is None and not list(folder.glob("*.parquet"))
    assert read_manifest(plan.store.stage_path("prepare", plan.fingerprints["prepare"])) is not None
    # lenient: the same file is used without that line, the fault counted
    plan, folder = run_groups(cfg.model_copy(update={"groups": cfg.groups.model_copy(update={"lenient": True})}))
    meta = read_manifest(folder)["meta"]
    assert meta["item"]["faults"]["unknown"]["count"] == 1 and meta["item"]["grouped"] == 9


def test_an_incremental_engine_run_never_starts_from_imported_groups(tmp_path):
    from lagcl.semantic import make_engine
    from tasks.groups import previous_result

    user_file, item_file = tiny_files(tmp_path / "llm")
    run_groups(stage_config(tmp_path, "groups.source=files", f"groups.user_file={user_file}",
                            f"groups.item_file={item_file}", "pipeline.stages.profiles=false"))
    from tasks.base import make_plan

    plan = make_plan(stage_config(tmp_path, "groups.incremental=true"))
    here = plan.store.stage_path("groups", plan.fingerprints["groups"])
    assert len(list(plan.store.iter_stage_dirs("groups"))) == 1
    assert previous_result(plan, here, make_engine(plan.cfg, plan.store.root)) is None


def test_the_cost_estimate_counts_no_group_requests_for_a_kind_read_from_a_file():
    from tasks.workload import planned_counts

    cfg = load_config(overrides=["groups.source=files", "groups.item_file=item_group.txt",
                                 "pipeline.stages.augment=false"])
    counts = planned_counts(pl.DataFrame(), 100, 200, cfg)
    assert {k for k in counts if k.startswith(("partition", "similarity"))} == {"partition_user", "similarity_user"}
    assert counts["partition_user"] == 1


def test_the_chain_names_the_group_source_of_the_rank_step():
    from lagcl.chain.text import format_chain

    levels = [{"level": "control", "variant": "control", "kept": True, "reason": "the control"},
              {"level": "rank", "variant": "rank", "kept": False, "reason": "turned down",
               "groups": "files (user user_group.json sha aead8b3e..; item item_group.txt sha c2b99f10..)"}]
    assert "  + rank groups: files (user user_group.json sha aead8b3e..; item item_group.txt sha c2b99f10..)" in \
        format_chain(levels)
