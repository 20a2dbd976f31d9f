import itertools

import pytest

from pamportal.crypto import mek


def test_round_trip_and_layout():
    key = mek.generate()
    text = mek.encode(key)
    groups = text.split("-")
    assert len(groups) == 14 and all(len(g) == 4 for g in groups)
    assert mek.decode(text) == key
    assert mek.decode(text.lower().replace("-", " ")) == key  # case and separators do not matter


@pytest.mark.parametrize("seed", range(20))
def test_checksum_catches_every_single_character_typo(seed):
    key = bytes((seed * 7 + i * 13) % 256 for i in range(32))
    text = mek.encode(key).replace("-", "")
    caught = 0
    for pos, replacement in itertools.product(range(len(text)), mek.ALPHABET):
        if text[pos] == replacement:
            continue
        typo = text[:pos] + replacement + text[pos + 1 :]
        with pytest.raises(mek.MekFormatError):
            mek.decode(typo)
        caught += 1
    assert caught == len(text) * 31


def test_bad_input_messages():
    key = mek.generate()
    text = mek.encode(key).replace("-", "")
    with pytest.raises(mek.MekFormatError, match="Type the"):
        mek.decode("  ")
    with pytest.raises(mek.MekFormatError, match="not in its alphabet"):
        mek.decode(text[:-1] + "0")
    with pytest.raises(mek.MekFormatError, match="has 55 characters"):
        mek.decode(text[:-1])
    swapped = text[1] + text[0] + text[2:] if text[0] != text[1] else text[2] + text[1] + text[0] + text[3:]
    with pytest.raises(mek.MekFormatError):
        mek.decode(swapped)


def test_fingerprint_and_derivation():
    a, b = mek.generate(), mek.generate()
    assert mek.fingerprint(a) != mek.fingerprint(b)
    assert a.hex() not in mek.fingerprint(a)
    assert mek.derive(a, "x") != mek.derive(a, "y")
    with pytest.raises(ValueError):
        mek.derive(a, "")


def test_seal_is_bound_to_key_and_purpose():
    key, other = mek.generate(), mek.generate()
    sealed = mek.seal(key, "ca-key", b"secret bytes")
    assert b"secret bytes" not in sealed.encode()
    assert mek.unseal(key, "ca-key", sealed) == b"secret bytes"
    with pytest.raises(mek.UnsealError):
        mek.unseal(other, "ca-key", sealed)
    with pytest.raises(mek.UnsealError):
        mek.unseal(key, "node-key", sealed)
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(mek.UnsealError):
        mek.unseal(key, "ca-key", tampered)
    for garbage in ("", "v1:", "v2:abcd", "v1:!!!!", "v1:" + "A" * 8):
        with pytest.raises(mek.UnsealError):
            mek.unseal(key, "ca-key", garbage)
