"""Raw-format readers: each published format, read through `read_raw`, yields the exact ids, ratings,
timestamps, titles and categories of its files; malformed, missing, empty or mis-encoded files are
errors that say where and what to do."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from lagcl.config import DataConfig, load_config
from lagcl.data.readers import FILE_ROLES, READERS, read_raw
from lagcl.errors import DataError

CONF_DATA = Path(__file__).resolve().parent.parent / "conf" / "data"


def config(tmp_path: Path, fmt: str, **kw) -> DataConfig:
    kw.setdefault("name", "fixture")
    kw.setdefault("published_at", "https://publisher.example/dataset")
    return DataConfig(format=fmt, path=str(tmp_path), **kw)


def write(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    data = ("\n".join(lines) + "\n").encode(encoding)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def jsonl(path: Path, records: list[dict]) -> Path:
    return write(path, [json.dumps(r, ensure_ascii=False) for r in records])


def rows(df: pl.DataFrame, *cols: str) -> list[tuple]:
    return sorted(df.select(cols).iter_rows())


# --- MovieLens 1M ----------------------------------------------------------------------------------

def ml1m_files(root: Path) -> None:
    write(root / "ratings.dat", ["1::1193::5::978300760", "1::661::3::978302109", "2::1193::4::978298413"],
          encoding="latin-1")
    write(root / "users.dat", ["1::F::1::10::48067", "2::M::56::16::70072"], encoding="latin-1")
    write(root / "movies.dat", ["1193::One Flew Over the Cuckoo's Nest (1975)::Drama",
                                "661::Léon (Professional), The (1994)::Crime|Drama|Romance"], encoding="latin-1")


def test_ml1m_reads_latin1_dat_files_into_ratings_users_and_titled_movies(tmp_path):
    ml1m_files(tmp_path)
    ds = read_raw(config(tmp_path, "ml-1m"), tmp_path)
    assert ds.interactions.rows() == [("1", "1193", 5.0, 978300760), ("1", "661", 3.0, 978302109),
                                      ("2", "1193", 4.0, 978298413)]
    assert rows(ds.items, "raw_id", "title", "year", "categories") == [
        ("1193", "One Flew Over the Cuckoo's Nest", 1975, ["Drama"]),
        ("661", "Léon (Professional), The", 1994, ["Crime", "Drama", "Romance"]),
    ]
    # occupation codes read as the README's words so profiles are text, not numbers
    assert rows(ds.users, "raw_id", "gender", "age", "occupation", "zip_code") == [
        ("1", "F", 1, "K-12 student", "48067"), ("2", "M", 56, "self-employed", "70072")]
    assert ds.skipped_lines == 0


def test_ml1m_line_with_wrong_field_count_is_an_error_naming_file_and_line(tmp_path):
    ml1m_files(tmp_path)
    write(tmp_path / "ratings.dat", ["1::1193::5::978300760", "1::661::3", "2::1193::4::978298413"])
    with pytest.raises(DataError, match=r"ratings\.dat:2: expected 4 fields"):
        read_raw(config(tmp_path, "ml-1m"), tmp_path)


def test_ml1m_non_strict_skips_and_counts_malformed_lines(tmp_path):
    ml1m_files(tmp_path)
    write(tmp_path / "ratings.dat", ["1::1193::5::978300760", "1::661::3", "2::1193::five::978298413",
                                     "2::661::2::978298414"])
    ds = read_raw(config(tmp_path, "ml-1m", strict=False), tmp_path)
    assert ds.interactions.rows() == [("1", "1193", 5.0, 978300760), ("2", "661", 2.0, 978298414)]
    assert ds.skipped_lines == 2


def test_missing_files_are_listed_together_with_the_publisher(tmp_path):
    write(tmp_path / "users.dat", ["1::F::1::10::48067"])
    with pytest.raises(DataError) as err:
        read_raw(config(tmp_path, "ml-1m", published_at="https://grouplens.org/datasets/movielens/1m/"), tmp_path)
    msg = str(err.value)
    assert "missing 2 file(s)" in msg
    assert "ratings.dat (ratings)" in msg and "movies.dat (movies)" in msg and "users.dat" not in msg
    assert "https://grouplens.org/datasets/movielens/1m/" in msg


# --- RecBole atomic files --------------------------------------------------------------------------

def test_atomic_maps_recbole_yelp_field_names_through_data_columns(tmp_path):
    write(tmp_path / "yelp.inter", ["review_id:token\tuser_id:token\tbusiness_id:token\tstars:float\tdate:float",
                                    "r1\tu1\tb1\t4.0\t1531001351", "r2\tu2\tb1\t2.0\t1325604498"])
    write(tmp_path / "yelp.item", ["business_id:token\titem_name:token_seq\tcity:token_seq\tcategories:token_seq",
                                   "b1\tJoe's Pizza\tNew York\tRestaurants Pizza"])
    cfg = config(tmp_path, "atomic", name="yelp",
                 columns={"item": "business_id", "rating": "stars", "timestamp": "date"})
    ds = read_raw(cfg, tmp_path)
    assert ds.interactions.rows() == [("u1", "b1", 4.0, 1531001351), ("u2", "b1", 2.0, 1325604498)]
    assert rows(ds.items, "raw_id", "title", "categories", "city") == [
        ("b1", "Joe's Pizza", ["Restaurants", "Pizza"], "New York")]


def test_atomic_without_rating_reads_implicit_feedback_as_rating_one_when_all_positive(tmp_path):
    write(tmp_path / "steam.inter", ["user_id:token\tproduct_id:token\ttimestamp:float", "u1\t10\t1.4e9"])
    write(tmp_path / "steam.item", ["id:token\tapp_name:token_seq\tgenres:token_seq", "10\tCounter-Strike\tAction"])
    cfg = config(tmp_path, "atomic", name="steam", all_positive=True,
                 columns={"item": "product_id", "items_id": "id"})
    ds = read_raw(cfg, tmp_path)
    assert ds.interactions.rows() == [("u1", "10", 1.0, 1400000000)]
    assert rows(ds.items, "raw_id", "title", "categories") == [("10", "Counter-Strike", ["Action"])]
    with pytest.raises(DataError, match="all_positive=true"):
        read_raw(cfg.model_copy(update={"all_positive": False}), tmp_path)


def test_atomic_ids_with_spaces_and_unicode_round_trip_unchanged(tmp_path):
    write(tmp_path / "fixture.inter", ["user_id:token\titem_id:token\trating:float\ttimestamp:float",
                                       " user one \tcafé ☕\t5\t1", "ユーザー\t007\t1\t2"])
    ds = read_raw(config(tmp_path, "atomic"), tmp_path)
    assert ds.interactions.rows() == [(" user one ", "café ☕", 5.0, 1), ("ユーザー", "007", 1.0, 2)]
    assert sorted(ds.items["raw_id"].to_list()) == ["007", "café ☕"]


def test_raw_ids_survive_prepare_unchanged(tmp_path):
    from lagcl.data.prepare import prepare

    users, items = [" user one ", "ユーザー", "007"], ["café ☕", "item\u00a0two", "0x1"]
    write(tmp_path / "fixture.inter", ["user_id:token\titem_id:token\trating:float"]
          + [f"{u}\t{i}\t5" for u in users for i in items])
    cfg = config(tmp_path, "atomic", kcore=1)
    p = prepare(read_raw(cfg, tmp_path), cfg, seed=1)
    assert sorted(p.users["raw_id"]) == sorted(users) and sorted(p.items["raw_id"]) == sorted(items)


def test_metadata_attribute_of_the_wrong_kind_becomes_null(tmp_path):
    yelp_files(tmp_path)
    jsonl(tmp_path / "yelp_academic_dataset_business.json", [
        {"business_id": "b1", "name": ["not", "a", "name"], "stars": "n/a", "review_count": {"x": 1}}])
    ds = read_raw(config(tmp_path, "yelp"), tmp_path)
    assert rows(ds.items, "raw_id", "title", "stars", "review_count") == [("b1", None, None, None)]


def test_atomic_unknown_field_for_the_user_id_names_the_fields_and_the_setting(tmp_path):
    write(tmp_path / "fixture.inter", ["uid:token\titem_id:token\trating:float", "u\ti\t5"])
    with pytest.raises(DataError, match=r"no column 'user_id'.*data\.columns\.user"):
        read_raw(config(tmp_path, "atomic"), tmp_path)


def test_atomic_malformed_line_is_named_by_its_line_number_or_skipped(tmp_path):
    write(tmp_path / "fixture.inter", ["user_id:token\titem_id:token\trating:float", "u1\ti1\t5", "",
                                       "u2\ti2", "u3\ti3\tNaN", "u4\ti4\t2"])
    with pytest.raises(DataError, match=r"fixture\.inter:4: expected 3 fields"):
        read_raw(config(tmp_path, "atomic"), tmp_path)
    ds = read_raw(config(tmp_path, "atomic", strict=False), tmp_path)
    assert ds.interactions.rows() == [("u1", "i1", 5.0, 0), ("u4", "i4", 2.0, 0)]
    assert ds.skipped_lines == 2


# --- Yelp --------------------------------------------------------------------------------------------

def yelp_files(root: Path) -> None:
    jsonl(root / "yelp_academic_dataset_review.json", [
        {"review_id": "r1", "user_id": "u1", "business_id": "b1", "stars": 5.0, "text": "Great!",
         "date": "2018-07-07 22:09:11"},
        {"review_id": "r2", "user_id": "u2", "business_id": "b2", "stars": 2, "text": "Meh",
         "date": "2012-01-03 15:28:18"},
    ])
    jsonl(root / "yelp_academic_dataset_business.json", [
        {"business_id": "b1", "name": "Café Olé", "city": "Tampa", "state": "FL", "stars": 4.5,
         "review_count": 12, "categories": "Coffee & Tea, Breakfast & Brunch", "attributes": {"WiFi": "free"}},
        {"business_id": "b2", "name": "Joe's Garage", "city": "Reno", "state": "NV", "stars": 3.0,
         "review_count": 7, "categories": None},
    ])
    jsonl(root / "yelp_academic_dataset_user.json", [
        {"user_id": "u1", "name": "Ann", "review_count": 3, "average_stars": 4.2, "fans": 1,
         "yelping_since": "2010-01-01 00:00:00", "friends": "u2, u3"},
    ])


def test_yelp_reads_reviews_businesses_and_users_from_json_lines(tmp_path):
    yelp_files(tmp_path)
    ds = read_raw(config(tmp_path, "yelp"), tmp_path)
    assert ds.interactions.rows() == [("u1", "b1", 5.0, 1531001351), ("u2", "b2", 2.0, 1325604498)]
    assert rows(ds.items, "raw_id", "title", "categories", "city", "state") == [
        ("b1", "Café Olé", ["Coffee & Tea", "Breakfast & Brunch"], "Tampa", "FL"),
        ("b2", "Joe's Garage", [], "Reno", "NV")]
    assert rows(ds.users, "raw_id", "review_count", "average_stars", "fans") == [("u1", 3, 4.2, 1)]


def test_yelp_user_file_is_optional_even_when_named_in_data_files_and_its_absence_is_logged(tmp_path, caplog):
    yelp_files(tmp_path)
    (tmp_path / "yelp_academic_dataset_user.json").unlink()
    for files in ({}, {"users": "yelp_academic_dataset_user.json"}):
        caplog.clear()
        with caplog.at_level("INFO", logger="lagcl.data"):
            ds = read_raw(config(tmp_path, "yelp", files=files), tmp_path)
        assert sorted(ds.users["raw_id"].to_list()) == ["u1", "u2"]
        assert [r.getMessage() for r in caplog.records] == [
            f"fixture: the users file {tmp_path / 'yelp_academic_dataset_user.json'} is not there: the users come from "
            "the interactions alone (named by their ids; no categories or attributes in their profiles)"]


def test_yelp_malformed_json_line_is_an_error_naming_file_and_line(tmp_path):
    yelp_files(tmp_path)
    path = tmp_path / "yelp_academic_dataset_review.json"
    path.write_text(path.read_text() + '{"user_id": "u3", "business_id": \n')
    with pytest.raises(DataError, match=r"yelp_academic_dataset_review\.json:3: not a valid JSON"):
        read_raw(config(tmp_path, "yelp"), tmp_path)


def test_yelp_review_without_stars_is_malformed_and_skipped_when_not_strict(tmp_path):
    yelp_files(tmp_path)
    path = tmp_path / "yelp_academic_dataset_review.json"
    path.write_text(path.read_text() + json.dumps({"user_id": "u3", "business_id": "b1", "date": "2020-01-01"})
                    + "\nnot json at all\n")
    with pytest.raises(DataError, match=r"review\.json:3: no 'stars' field"):
        read_raw(config(tmp_path, "yelp"), tmp_path)
    ds = read_raw(config(tmp_path, "yelp", strict=False), tmp_path)
    assert ds.interactions.height == 2
    assert ds.skipped_lines == 2


def test_wrongly_encoded_file_is_a_data_error_naming_line_byte_offset_and_the_encoding_setting(tmp_path):
    yelp_files(tmp_path)
    first = '{"business_id": "b0", "name": "Diner", "categories": "Food"}'
    second = '{"business_id": "b1", "name": "Café", "categories": "Food"}'
    write(tmp_path / "yelp_academic_dataset_business.json", [first, second], encoding="latin-1")
    offset = len(first) + 1 + second.index("é")
    with pytest.raises(DataError, match=rf"business\.json:2: not valid UTF-8 text \(invalid continuation byte at "
                                        rf"byte offset {offset} of the file\); set data\.encoding"):
        read_raw(config(tmp_path, "yelp"), tmp_path)
    items = read_raw(config(tmp_path, "yelp", encoding="latin-1"), tmp_path).items
    assert rows(items.filter(pl.col("raw_id") == "b1"), "title") == [("Café",)]


def test_empty_file_is_a_data_error(tmp_path):
    yelp_files(tmp_path)
    (tmp_path / "yelp_academic_dataset_review.json").write_bytes(b"")
    with pytest.raises(DataError, match=r"review\.json \(reviews\) is empty"):
        read_raw(config(tmp_path, "yelp"), tmp_path)


def test_file_with_only_malformed_lines_holds_no_interactions(tmp_path):
    yelp_files(tmp_path)
    write(tmp_path / "yelp_academic_dataset_review.json", ["{oops", "[1, 2]"])
    with pytest.raises(DataError, match=r"holds no interactions \(2 malformed line\(s\) skipped\)"):
        read_raw(config(tmp_path, "yelp", strict=False), tmp_path)


def test_max_interactions_stops_reading_early(tmp_path):
    yelp_files(tmp_path)
    ds = read_raw(config(tmp_path, "yelp", max_interactions=1), tmp_path)
    assert ds.interactions.rows() == [("u1", "b1", 5.0, 1531001351)]


# --- Amazon ------------------------------------------------------------------------------------------

AMAZON_FILES = {"reviews": "Books.json.gz", "meta": "meta_Books.json.gz"}


def test_amazon2018_reads_gzipped_reviews_and_metadata(tmp_path):
    jsonl(tmp_path / "Books.json.gz", [
        {"overall": 5.0, "verified": True, "reviewTime": "09 13, 2009", "reviewerID": "A3HHQ0AHSUG2GN",
         "asin": "0000013714", "reviewText": "Lovely", "unixReviewTime": 1252800000},
        {"overall": 2.0, "reviewerID": "A1 Ü", "asin": "0002005263", "unixReviewTime": 1403568000},
    ])
    write(tmp_path / "meta_Books.json.gz", [
        json.dumps({"asin": "0000013714", "title": "Heavenly Highway Hymns", "brand": "Jimbo",
                    "category": ["Books", "Christian Books & Bibles", "Books"], "main_cat": "Books"}),
        # the 2014 release: a Python literal with a list of category paths
        "{'asin': '0002005263', 'title': 'Mantle', 'categories': [['Books', 'Sports'], ['Books', 'Biographies']]}",
    ])
    ds = read_raw(config(tmp_path, "amazon2018", files=AMAZON_FILES), tmp_path)
    assert ds.interactions.rows() == [("A3HHQ0AHSUG2GN", "0000013714", 5.0, 1252800000),
                                      ("A1 Ü", "0002005263", 2.0, 1403568000)]
    assert rows(ds.items, "raw_id", "title", "categories", "brand") == [
        ("0000013714", "Heavenly Highway Hymns", ["Books", "Christian Books & Bibles"], "Jimbo"),
        ("0002005263", "Mantle", ["Books", "Sports", "Biographies"], None)]


def test_amazon_needs_the_file_names_of_its_category(tmp_path):
    with pytest.raises(DataError, match=r"data\.files\.reviews, data\.files\.meta"):
        read_raw(config(tmp_path, "amazon2018"), tmp_path)


def test_truncated_gzip_is_a_data_error(tmp_path):
    jsonl(tmp_path / "meta_Books.json.gz", [{"asin": "a", "title": "t"}])
    (tmp_path / "Books.json.gz").write_bytes(gzip.compress(b'{"overall": 5.0}\n' * 50)[:20])
    with pytest.raises(DataError, match=r"Books\.json\.gz is truncated or corrupt after line 0"):
        read_raw(config(tmp_path, "amazon2018", files=AMAZON_FILES), tmp_path)


def test_amazon2023_keys_items_by_parent_asin_and_converts_milliseconds(tmp_path):
    jsonl(tmp_path / "Books.jsonl", [
        {"rating": 4.0, "title": "ok", "asin": "B0-variant", "parent_asin": "B0PARENT", "user_id": "AE22",
         "timestamp": 1588687728923, "helpful_vote": 2, "verified_purchase": True},
    ])
    jsonl(tmp_path / "meta_Books.jsonl", [
        {"main_category": "Books", "title": "A Novel", "average_rating": 4.5, "store": "Jane Doe (Author)",
         "categories": ["Books", "Literature & Fiction"], "parent_asin": "B0PARENT", "details": {}},
        {"title": "no id here"},
    ])
    cfg = config(tmp_path, "amazon2023", files={"reviews": "Books.jsonl", "meta": "meta_Books.jsonl"})
    ds = read_raw(cfg, tmp_path)
    assert ds.interactions.rows() == [("AE22", "B0PARENT", 4.0, 1588687728)]
    assert rows(ds.items, "raw_id", "title", "categories", "main_category", "store") == [
        ("B0PARENT", "A Novel", ["Books", "Literature & Fiction"], "Books", "Jane Doe (Author)")]
    assert ds.notes == {"meta_Books.jsonl: records without an id (dropped)": 1}


# --- Steam -------------------------------------------------------------------------------------------

def steam_files(root: Path) -> None:
    write(root / "australian_user_reviews.json", [
        "{'user_id': '76561197970982479', 'user_url': 'http://steamcommunity.com/profiles/76561197970982479', "
        "'reviews': [{'funny': '', 'posted': 'Posted November 5, 2011.', 'last_edited': '', 'item_id': '1250', "
        "'helpful': 'No ratings yet', 'recommend': True, 'review': 'Simple yet with great replayability.'}, "
        "{'funny': '', 'posted': 'Posted July 15.', 'item_id': '22200', 'recommend': False, 'review': 'meh'}]}",
        "{'user_id': 'js41637', 'reviews': [{'posted': 'Posted June 24, 2014.', 'item_id': '1250', "
        "'recommend': True, 'review': 'ok'}]}",
    ])
    write(root / "steam_games.json", [
        "{'publisher': 'Tripwire', 'genres': ['Action'], 'app_name': 'Killing Floor', 'title': 'Killing Floor', "
        "'tags': ['FPS', 'Zombies'], 'developer': 'Tripwire Interactive', 'id': '1250'}",
        "{u'app_name': u'Zeno Clash', u'tags': [u'Action', u'Indie'], u'price': u'Free', u'id': u'22200'}",
        "{'app_name': 'Orphan entry without id', 'genres': ['Casual']}",
    ])


def test_steam_reads_one_interaction_per_review_rated_1_when_recommended_and_0_when_not(tmp_path):
    steam_files(tmp_path)
    ds = read_raw(config(tmp_path, "steam", all_positive=True, rating_range=(0, 1)), tmp_path)
    assert ds.interactions.rows() == [("76561197970982479", "1250", 1.0, 1320451200),
                                      ("76561197970982479", "22200", 0.0, 0),
                                      ("js41637", "1250", 1.0, 1403568000)]
    assert rows(ds.items, "raw_id", "title", "categories", "tags") == [
        ("1250", "Killing Floor", ["Action"], ["FPS", "Zombies"]),
        ("22200", "Zeno Clash", ["Action", "Indie"], ["Action", "Indie"])]
    assert ds.notes == {"steam_games.json: records without an id (dropped)": 1,
                        "reviews without a year (timestamp 0)": 1}


def test_steam_malformed_literal_line_is_an_error_naming_file_and_line(tmp_path):
    steam_files(tmp_path)
    path = tmp_path / "australian_user_reviews.json"
    path.write_text(path.read_text() + "{'user_id': 'x', 'reviews': [\n")
    with pytest.raises(DataError, match=r"australian_user_reviews\.json:3: not a valid Python literal"):
        read_raw(config(tmp_path, "steam", all_positive=True, rating_range=(0, 1)), tmp_path)


# --- generic tables ----------------------------------------------------------------------------------

def test_csv_table_keeps_string_ids_and_reads_iso_or_unix_timestamps(tmp_path):
    write(tmp_path / "ratings.csv", ["uid,iid,stars,when", "007,A 1,4.5,2018-07-07 22:09:11",
                                     'ünï,"B, 2",1,1325604498'])
    write(tmp_path / "items.csv", ["iid,name,genres", "A 1,Alpha,Drama|Comedy", '"B, 2",Beta,'])
    cfg = config(tmp_path, "table", files={"interactions": "ratings.csv", "items": "items.csv"},
                 columns={"user": "uid", "item": "iid", "rating": "stars", "timestamp": "when",
                          "title": "name", "categories": "genres"})
    ds = read_raw(cfg, tmp_path)
    assert ds.interactions.rows() == [("007", "A 1", 4.5, 1531001351), ("ünï", "B, 2", 1.0, 1325604498)]
    assert rows(ds.items, "raw_id", "title", "categories") == [("A 1", "Alpha", ["Drama", "Comedy"]),
                                                               ("B, 2", "Beta", [])]


def semicolon_table(root: Path) -> DataConfig:
    write(root / "ratings.csv", ["user_id;item_id;rating;timestamp", "u1;Amélie, le film;5;10", "u2;i2;2;20"])
    write(root / "items.csv", ["item_id;title;genres", "Amélie, le film;Amélie;Comedy|Romance", "i2;Heat;Crime"])
    return config(root, "table", files={"interactions": "ratings.csv", "items": "items.csv"},
                  columns={"title": "title", "categories": "genres"})


def test_a_semicolon_separated_csv_reads_with_data_separator_and_keeps_commas_inside_fields(tmp_path):
    cfg = semicolon_table(tmp_path).model_copy(update={"separator": ";"})
    ds = read_raw(cfg, tmp_path)
    assert ds.interactions.rows() == [("u1", "Amélie, le film", 5.0, 10), ("u2", "i2", 2.0, 20)]
    assert rows(ds.items, "raw_id", "title", "categories") == [("Amélie, le film", "Amélie", ["Comedy", "Romance"]),
                                                               ("i2", "Heat", ["Crime"])]


def test_without_data_separator_the_error_counts_the_columns_and_names_the_separator_to_set(tmp_path):
    cfg = semicolon_table(tmp_path)
    with pytest.raises(DataError) as err:
        read_raw(cfg, tmp_path)
    msg = str(err.value)
    assert msg == (f"{tmp_path / 'ratings.csv'}: no column 'user_id' for the user id (columns: "
                   "['user_id;item_id;rating;timestamp']); the file has 1 column when split on ','; if it is "
                   "separated by ';' set data.separator=';' (in conf/data/fixture.yaml, or --set data.separator=';')")
    assert "data.columns" not in msg  # the columns are right: renaming them would not help
    # the items file alone separated by ';': its error says the same
    write(tmp_path / "ratings.csv", ["user_id,item_id,rating,timestamp", "u1,i2,5,10"])
    with pytest.raises(DataError, match=r"items\.csv:2: expected 1 fields separated by ',', found 2; the file has 1 "
                                        r"column when split on ','; if it is separated by ';' set "
                                        r"data\.separator=';' \(in conf/data/fixture\.yaml"):
        read_raw(cfg, tmp_path)
    # without a comma inside its fields: the header's columns are not found
    write(tmp_path / "items.csv", ["item_id;title;genres", "i2;Heat;Crime"])
    with pytest.raises(DataError, match=r"items\.csv: no id column 'item_id' .* the file has 1 column when split "
                                        r"on ','; if it is separated by ';' set data\.separator=';'"):
        read_raw(cfg, tmp_path)


def test_data_separator_is_one_character_tab_written_as_backslash_t_and_read_by_the_table_format_only():
    cfg = DataConfig(name="x", format="table", path=".", separator="|")
    assert cfg.separator == "|"
    assert DataConfig(name="x", format="table", path=".", separator="\\t").separator == "\t"
    with pytest.raises(ValueError, match="one character"):
        DataConfig(name="x", format="table", path=".", separator=";;")
    with pytest.raises(ValueError, match="format 'table' only"):
        DataConfig(name="x", format="atomic", path=".", separator=";")


def test_absent_items_and_users_files_named_in_data_files_come_from_the_interactions_in_one_log_line(
        tmp_path, caplog):
    write(tmp_path / "ratings.csv", ["user_id,item_id,rating,timestamp", "u1,i1,5,10", "u2,i1,4,20", "u2,i2,1,30"])
    cfg = config(tmp_path, "table", files={"interactions": "ratings.csv", "items": "items.csv", "users": "users.csv"})
    with caplog.at_level("INFO", logger="lagcl.data"):
        ds = read_raw(cfg, tmp_path)
    assert rows(ds.items, "raw_id", "title", "categories") == [("i1", "i1", []), ("i2", "i2", [])]
    assert ds.users["raw_id"].sort().to_list() == ["u1", "u2"]
    assert [r.getMessage() for r in caplog.records] == [
        f"fixture: the items file {tmp_path / 'items.csv'} and the users file {tmp_path / 'users.csv'} are not "
        "there: the items and users come from the interactions alone (named by their ids; no categories or "
        "attributes in their profiles)"]


def test_an_empty_own_file_says_it_is_empty_and_what_it_should_hold_not_to_download_it_again(tmp_path):
    cols = {"user": "uid", "item": "iid", "rating": "stars", "timestamp": "when", "title": "name"}
    cfg = config(tmp_path, "table", name="my-csv", published_at="nowhere: it is your own data",
                 files={"interactions": "ratings.csv", "items": "items.csv"}, columns=cols)
    (tmp_path / "ratings.csv").write_bytes(b"")
    write(tmp_path / "items.csv", ["iid,name", "i1,One"])
    with pytest.raises(DataError) as err:
        read_raw(cfg, tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'ratings.csv'} (interactions) is empty: it is your own file, and it should hold a header line "
        "naming its columns (user 'uid', item 'iid', rating 'stars', timestamp 'when': data.columns in "
        "conf/data/my-csv.yaml) and then one interaction per line (.csv/.tsv/.txt), or be a Parquet table with "
        "those columns")
    assert "publisher" not in str(err.value) and "download" not in str(err.value)
    write(tmp_path / "ratings.csv", ["uid,iid,stars,when", "u1,i1,5,10"])
    (tmp_path / "items.csv").write_bytes(b"")
    with pytest.raises(DataError, match=r"items\.csv \(items\) is empty: it is your own file, .*\(item 'iid', title "
                                        r"'name': data\.columns .*one item per line.*or remove the file"):
        read_raw(cfg, tmp_path)
    # a published dataset's empty file is still downloaded again, from where it is published
    yelp_files(tmp_path)
    (tmp_path / "yelp_academic_dataset_review.json").write_bytes(b"")
    with pytest.raises(DataError, match=r"is empty; download it again from the dataset's publisher "
                                        r"\(https://publisher\.example/dataset\)"):
        read_raw(config(tmp_path, "yelp"), tmp_path)


def test_parquet_table_with_list_categories_and_a_users_table(tmp_path):
    pl.DataFrame({"user_id": [1, 2], "item_id": ["x", "y"], "rating": [5, 3], "timestamp": [10, 20]}).write_parquet(
        tmp_path / "inter.parquet")
    pl.DataFrame({"item_id": ["x", "y"], "title": ["Ex", "Why"], "categories": [["a", "b"], []]}).write_parquet(
        tmp_path / "items.parquet")
    pl.DataFrame({"user_id": [1], "age": [30]}).write_parquet(tmp_path / "users.parquet")
    cfg = config(tmp_path, "table", files={"interactions": "inter.parquet", "items": "items.parquet",
                                           "users": "users.parquet"})
    ds = read_raw(cfg, tmp_path)
    assert ds.interactions.rows() == [("1", "x", 5.0, 10), ("2", "y", 3.0, 20)]
    assert rows(ds.items, "raw_id", "title", "categories") == [("x", "Ex", ["a", "b"]), ("y", "Why", [])]
    assert rows(ds.users, "raw_id", "age") == [("1", 30)]


def test_tsv_without_rating_column_is_implicit_feedback(tmp_path):
    write(tmp_path / "clicks.tsv", ["user\titem", "u1\ti1", "u1\ti2"])
    cfg = config(tmp_path, "table", all_positive=True, files={"interactions": "clicks.tsv"},
                 columns={"user": "user", "item": "item"})
    assert read_raw(cfg, tmp_path).interactions.rows() == [("u1", "i1", 1.0, 0), ("u1", "i2", 1.0, 0)]


def test_csv_ragged_or_non_numeric_lines_are_errors_or_skipped(tmp_path):
    write(tmp_path / "r.csv", ["user_id,item_id,rating", "u1,i1,5", "u2,i2", "u3,i3,great", "u4,i4,1"])
    cfg = config(tmp_path, "table", files={"interactions": "r.csv"})
    with pytest.raises(DataError, match=r"r\.csv:3: expected 3 fields"):
        read_raw(cfg, tmp_path)
    ds = read_raw(cfg.model_copy(update={"strict": False}), tmp_path)
    assert ds.interactions.rows() == [("u1", "i1", 5.0, 0), ("u4", "i4", 1.0, 0)]
    assert ds.skipped_lines == 2


def test_gzipped_csv_reads_quoted_fields_that_hold_separators_and_line_breaks(tmp_path):
    write(tmp_path / "r.csv.gz", ["user_id,item_id,rating", 'u1,"i, 1",5', 'u2,"two', 'lines",4', "u3,i3,bad"])
    cfg = config(tmp_path, "table", files={"interactions": "r.csv.gz"})
    with pytest.raises(DataError, match=r"r\.csv\.gz:5: rating 'bad' is not a number"):
        read_raw(cfg, tmp_path)
    ds = read_raw(cfg.model_copy(update={"strict": False}), tmp_path)
    assert ds.interactions.rows() == [("u1", "i, 1", 5.0, 0), ("u2", "two\nlines", 4.0, 0)]


def test_parquet_row_with_missing_rating_is_named_by_row_number_or_skipped(tmp_path):
    pl.DataFrame({"user_id": ["a", "b", "c"], "item_id": ["x", "y", "z"], "rating": [4.0, None, 2.0],
                  "timestamp": ["2018-07-07 22:09:11", None, "2012-01-03 15:28:18"]},
                 ).write_parquet(tmp_path / "r.parquet")
    cfg = config(tmp_path, "table", files={"interactions": "r.parquet"})
    with pytest.raises(DataError, match=r"r\.parquet: row 2: .*1 such rows"):
        read_raw(cfg, tmp_path)
    ds = read_raw(cfg.model_copy(update={"strict": False}), tmp_path)
    assert ds.interactions.rows() == [("a", "x", 4.0, 1531001351), ("c", "z", 2.0, 1325604498)]
    assert ds.skipped_lines == 1


def test_unknown_column_key_is_an_error_listing_the_known_ones(tmp_path):
    write(tmp_path / "r.csv", ["user_id,item_id,rating", "u1,i1,5"])
    cfg = config(tmp_path, "table", files={"interactions": "r.csv"}, columns={"usr": "user_id"})
    with pytest.raises(DataError, match=r"\['usr'\].*user, item, rating"):
        read_raw(cfg, tmp_path)


# --- the shipped dataset configurations ------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(p.stem for p in CONF_DATA.glob("*.yaml") if p.stem != "ml-100k"))
def test_every_dataset_config_names_its_files_and_publisher_when_they_are_missing(name, tmp_path):
    cfg = load_config(data=name).data
    assert cfg.format in READERS
    assert cfg.path == f"data/{name}" and cfg.published_at
    with pytest.raises(DataError) as err:
        read_raw(cfg.model_copy(update={"path": str(tmp_path / "nothing")}), tmp_path)
    msg = str(err.value)
    assert cfg.published_at in msg
    required, _ = FILE_ROLES[cfg.format](cfg)
    for role, file in cfg.files.items():
        # an optional file (items, users) is not missing: those come from the interactions
        assert (f"{file} ({role})" in msg) == (role in required)
