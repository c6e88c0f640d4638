"""Dedupe keys are unambiguous (finding 4 of issue 12), and unchanged for every key a
version before 0011 could tell apart, so rows and webhook ids written before the upgrade
stay valid.

A source or id may contain U+001F, the separator the keys used to be joined with:
(source ``a␟b``, id ``c``) and (source ``a``, id ``b␟c``) were one message."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from schemas.webhooks import MESSAGE_ID_PATTERN
from storage import inbox
from workers.webhooks import service

US = "\x1f"
COLLIDING = [(f"a{US}b", "c"), ("a", f"b{US}c")]  # (source, id): one joined string
ENDPOINT = "ep_" + "a" * 26


def legacy_inbox_key(tenant: str, source: str, id: str) -> bytes:
    """The inbox key every version before 0011 wrote."""
    return hashlib.blake2b(f"{tenant}{US}{source}{US}{id}".encode(), digest_size=16).digest()


@dataclass(frozen=True)
class Ident:
    tenantid: str
    source: str
    id: str


def test_the_colliding_pair_gets_two_inbox_keys() -> None:
    keys = {inbox.message_key("acme", s, i) for s, i in COLLIDING}
    assert len(keys) == 2
    # and the batch path agrees with the single-message path
    batch_keys, _ = inbox.keys_of([Ident("acme", s, i) for s, i in COLLIDING])
    assert set(batch_keys) == keys


def test_keys_of_messages_without_the_separator_are_those_written_before_0011() -> None:
    messages = [Ident("acme", "bulk", "e1"), Ident("t-2", "billstream/ingress", "0190-ab")]
    keys, legacy = inbox.keys_of(messages)
    assert keys == [legacy_inbox_key(m.tenantid, m.source, m.id) for m in messages]
    assert legacy == {}  # the claim costs what it cost: no second lookup
    assert inbox.message_keys("acme", "bulk", "e1") == (
        legacy_inbox_key("acme", "bulk", "e1"),
        None,
    )


def test_a_key_that_changed_carries_its_old_one_for_the_claim_to_look_up() -> None:
    messages = [Ident("acme", "bulk", "e1"), *(Ident("acme", s, i) for s, i in COLLIDING)]
    keys, legacy = inbox.keys_of(messages)
    assert legacy == {keys[1]: legacy_inbox_key("acme", *COLLIDING[0])} | {
        keys[2]: legacy_inbox_key("acme", *COLLIDING[1])
    }
    assert inbox.message_keys("acme", *COLLIDING[0]) == (keys[1], legacy[keys[1]])
    # a new-form key is never an old-form one (another hash function)
    assert not set(keys[1:]) & {legacy_inbox_key("acme", s, i) for s, i in COLLIDING}


text_with_separators = st.text(alphabet=st.sampled_from(["a", "b", US, "é", "\x00"]), max_size=6)


@given(
    a=st.tuples(text_with_separators, text_with_separators, text_with_separators),
    b=st.tuples(text_with_separators, text_with_separators, text_with_separators),
)
def test_inbox_keys_and_webhook_ids_are_equal_only_for_equal_identities(
    a: tuple[str, str, str], b: tuple[str, str, str]
) -> None:
    assert (inbox.message_key(*a) == inbox.message_key(*b)) == (a == b)
    assert (service.message_id(*a) == service.message_id(*b)) == (a == b)


def test_the_colliding_pair_gets_two_webhook_message_ids() -> None:
    ids = {service.message_id(ENDPOINT, s, i) for s, i in COLLIDING}
    assert len(ids) == 2
    assert all(re.fullmatch(MESSAGE_ID_PATTERN, i) for i in ids)


def test_webhook_ids_of_events_without_the_separator_are_those_sent_before() -> None:
    """A message already sent keeps its ``webhook-id``: the id of a re-fanned-out event is
    the one its receivers have seen."""
    digest = hashlib.blake2b(
        f"{ENDPOINT}{US}billstream/invoicing{US}0190-ab".encode(), digest_size=16
    ).digest()
    before = "msg_" + base64.b32encode(digest).decode().rstrip("=").lower()
    assert service.message_id(ENDPOINT, "billstream/invoicing", "0190-ab") == before
