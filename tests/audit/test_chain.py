"""The pure chain: encoding pinned by known answers, and verification naming the
exact event for every kind of damage."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pamportal.audit import chain

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)


def test_known_answers_pin_the_encoding():
    # Computed once with the original part-by-part implementation; an accidental
    # change of the encoding would orphan every chain already written.
    details = chain.canonical_details({"b": 1, "a": "é"})
    assert details == '{"a":"é","b":1}'
    assert chain.event_hash(
        1, T0, None, "system", "", "", "setup.token_issued", "", "succeeded", details, chain.GENESIS_HASH
    ) == "17f3f165602e3e4c99781521e5d5bea02c5872071cfaa753104b0e3339901843"
    assert chain.event_hash(
        42, T0, 7, "ådmin", "10.1.2.3", "req", "auth.login", "user:x", "denied", "{}", "ab" * 32
    ) == "16ba534d5f0017eed85fb8eee2a7eeb3a245709b9fe56bdd20ed53ef560357be"


def test_length_prefixes_keep_field_boundaries():
    a = chain.event_hash(1, T0, None, "ab", "c", "", "auth.login", "", "succeeded", "{}", chain.GENESIS_HASH)
    b = chain.event_hash(1, T0, None, "a", "bc", "", "auth.login", "", "succeeded", "{}", chain.GENESIS_HASH)
    assert a != b


def test_naive_times_are_refused():
    with pytest.raises(ValueError):
        chain.canonical_time(datetime(2026, 1, 1))


def test_canonical_time_is_utc():
    plus_two = timezone(timedelta(hours=2))
    assert chain.canonical_time(T0.astimezone(plus_two)) == "2026-01-02T03:04:05.678901Z"


def make_rows(count: int, *, time_as_text: bool = False) -> list[tuple]:
    rows, prev = [], chain.GENESIS_HASH
    for position in range(1, count + 1):
        when = T0 + timedelta(seconds=position)
        fields = [position, when, 3, "admin", "10.0.0.1", f"r{position}", "auth.login", f"user:{position}",
                  "succeeded", chain.canonical_details({"n": position}), prev]
        digest = chain.event_hash(*fields)
        if time_as_text:
            fields[1] = chain.canonical_time(when)
        rows.append((*fields, digest))
        prev = digest
    return rows


def with_hash(fields: list) -> tuple:
    return (*fields, chain.event_hash(*fields))


@pytest.mark.parametrize("time_as_text", [False, True])
def test_intact_chain_verifies(time_as_text):
    rows = make_rows(30, time_as_text=time_as_text)
    result = chain.verify_rows(rows)
    assert result.ok and result.verified == 30
    assert result.last_position == 30 and result.last_hash == rows[-1][-1]


def test_empty_chain_verifies():
    result = chain.verify_rows([])
    assert result.ok and result.verified == 0 and result.last_hash == chain.GENESIS_HASH


def test_edited_row_is_named():
    rows = make_rows(30)
    edited = list(rows[16])
    edited[7] = "user:mallory"
    rows[16] = tuple(edited)
    result = chain.verify_rows(rows)
    assert result.first_bad_position == 17 and result.verified == 16
    assert "content was changed" in result.reason


def test_deleted_row_is_named():
    rows = make_rows(30)
    del rows[16]
    assert chain.verify_rows(rows).first_bad_position == 17


def test_deleted_row_with_the_rest_renumbered_is_named():
    rows = make_rows(30)
    del rows[16]
    rows = [row if row[0] < 17 else (row[0] - 1, *row[1:]) for row in rows]
    result = chain.verify_rows(rows)
    assert result.first_bad_position == 17 and "deleted" in result.reason


def test_inserted_row_is_named():
    rows = make_rows(30)
    intruder = with_hash([17, T0, 3, "admin", "10.0.0.1", "x", "user.created", "user:mallory", "succeeded", "{}", rows[15][-1]])
    rows = rows[:16] + [intruder] + [(row[0] + 1, *row[1:]) for row in rows[16:]]
    result = chain.verify_rows(rows)
    assert result.first_bad_position == 17 and "inserted" in result.reason


def test_swapped_rows_are_named():
    rows = make_rows(30)
    rows[16], rows[17] = (17, *rows[17][1:]), (18, *rows[16][1:])
    assert chain.verify_rows(rows).first_bad_position == 17


def test_rows_out_of_order_are_named():
    rows = make_rows(30)
    rows[16], rows[17] = rows[17], rows[16]
    assert chain.verify_rows(rows).first_bad_position == 17


def test_forged_row_with_its_own_hash_recomputed_is_named():
    rows = make_rows(30)
    forged = list(rows[16][:-1])
    forged[7] = "user:mallory"
    rows[16] = with_hash(forged)
    result = chain.verify_rows(rows)
    assert result.first_bad_position == 17 and result.verified == 16


def test_first_row_must_start_from_genesis():
    rows = make_rows(3)
    rows[0] = with_hash(list(rows[0][:-2]) + ["f" * 64])
    assert chain.verify_rows(rows).first_bad_position == 1


def test_non_ascii_rows_verify_and_edits_are_still_caught():
    rows, prev = [], chain.GENESIS_HASH
    for position in range(1, 6):
        fields = [position, T0, None, "jürgen", "", "", "auth.login", "user:ŝ", "succeeded", '{"n":"✓"}', prev]
        rows.append(with_hash(fields))
        prev = rows[-1][-1]
    assert chain.verify_rows(rows).ok
    edited = list(rows[2])
    edited[3] = "jurgen"
    rows[2] = tuple(edited)
    assert chain.verify_rows(rows).first_bad_position == 3
