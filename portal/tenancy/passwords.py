"""Passwords: the policy a new password must meet, and hashing with Argon2id (argon2-cffi's
recommended parameters).

A new password has at least ``MIN_LENGTH`` characters and zxcvbn scores it ``MIN_SCORE`` or
better, judged against what the caller knows of the user (e-mail address, name, tenant name).
An existing password is never refused at sign-in; its hash is only renewed when the hashing
parameters have changed (:func:`needs_rehash`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from zxcvbn import zxcvbn

_hasher = PasswordHasher()
MIN_LENGTH = 12
MAX_LENGTH = 1000  # only a bound on what is accepted; nothing shorter is refused for length
MIN_SCORE = 3  # zxcvbn's "safely unguessable: moderate protection from offline slow-hash scenario"
# zxcvbn's time grows quickly with the length; what follows the first 128 characters only adds strength.
SCORED_LENGTH = 128
NO_FEEDBACK = "add another word or two."
_zxcvbn_lock = threading.Lock()


def password_problem(password: str, user_inputs: Iterable[str] = ()) -> str | None:
    """Why ``password`` may not be chosen, as a sentence or two to show the user; None when it
    may. ``user_inputs`` are what the password must not be made of (the user's e-mail address,
    name, the tenant's name)."""
    if len(password) < MIN_LENGTH:
        return f"The password must be at least {MIN_LENGTH} characters long."
    if len(password) > MAX_LENGTH:
        return f"The password can be at most {MAX_LENGTH:,} characters long."
    with _zxcvbn_lock:  # zxcvbn keeps the user inputs in a module-level dictionary between its steps
        result = zxcvbn(password[:SCORED_LENGTH], user_inputs=_words(user_inputs), max_length=SCORED_LENGTH)
    if result["score"] >= MIN_SCORE:
        return None
    return _too_easy(result["feedback"]["warning"], result["feedback"]["suggestions"])


def hash_password(password: str, user_inputs: Iterable[str] = ()) -> str:
    """The Argon2id hash of a new password; ``ValueError`` with :func:`password_problem`'s
    message when the password may not be chosen."""
    problem = password_problem(password, user_inputs)
    if problem is not None:
        raise ValueError(problem)
    return _hasher.hash(password)


def rehash_password(password: str) -> str:
    """A fresh hash of a password already verified against its old hash (no policy check: an
    existing password is not refused)."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether the hash was made with other parameters than the current ones (or cannot be read)."""
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


def _words(user_inputs: Iterable[str]) -> list[str]:
    """Each input, and its words: "Acme Analytics" also as "acme", "analytics" and
    "acmeanalytics", an address also as its local part and domain labels."""
    words: dict[str, None] = {}
    for value in user_inputs:
        value = (value or "").strip().lower()
        if not value:
            continue
        parts = [part for part in re.split(r"[\W_]+", value) if len(part) >= 3]
        for word in (value, *parts, "".join(parts)):
            if word:
                words.setdefault(word[:SCORED_LENGTH])
    return list(words)


def _too_easy(warning: str, suggestions: list[str]) -> str:
    sentences = [text.strip() for text in (warning, *suggestions) if text and text.strip()]
    sentences = [text if text.endswith((".", "!", "?")) else text + "." for text in sentences]
    if not sentences:
        return "This password is too easy to guess: " + NO_FEEDBACK
    first = sentences[0]
    if first[1:2].islower():  # "This is a top-10 common password" reads on after the colon
        first = first[0].lower() + first[1:]
    return "This password is too easy to guess: " + " ".join([first, *sentences[1:]])


# Verified against when the e-mail is unknown, so both cases take the same time.
DUMMY_HASH = _hasher.hash("tollgate-timing-equaliser")
