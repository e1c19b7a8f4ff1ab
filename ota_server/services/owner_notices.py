"""A person, always: every recall carries an owner notice with a named contact.

Every recall reaches owners: an OTA recall through each car's notice (and the owner page),
a dealer recall through the owner letters the law asks for, and either on ``/lookup``. So
filing one needs the notice's purpose, what changes, the expected minutes, the functions
unavailable during the update (``[]`` when none) and a contact with name, role, phone and
email, or the manufacturer's default contact from configuration
(``OTA_MANUFACTURER_CONTACT_*``). The notice is resolved once, at filing, and stored whole:
what owners are told does not move when the configuration does.
"""

from __future__ import annotations

from firmware_bundles.messages import Contact, OwnerNotice
from ota_server.errors import InvalidInput
from ota_server.schemas import ContactDraft, OwnerNoticeDraft

CONTACT_FIELDS = ("name", "role", "phone", "email")
DEFAULT_CONTACT_SETTINGS = "OTA_MANUFACTURER_CONTACT_NAME, _ROLE, _PHONE and _EMAIL"


def default_contact(name: str, role: str, phone: str, email: str) -> Contact | None:
    """The configured manufacturer contact, or None unless all four fields are set."""
    if not all(part.strip() for part in (name, role, phone, email)):
        return None
    return Contact(name=name.strip(), role=role.strip(), phone=phone.strip(), email=email.strip())


def resolve(draft: OwnerNoticeDraft | None, *, safety_recall: bool, fallback: Contact | None) -> OwnerNotice:
    """The notice owners will be shown, or InvalidInput naming every missing field."""
    missing: list[str] = []
    given = draft or OwnerNoticeDraft()
    if draft is None:
        missing.append("owner_notice")
    for field in ("purpose", "what_changes"):
        if not getattr(given, field).strip():
            missing.append(f"owner_notice.{field}")
    if given.expected_minutes is None:
        missing.append("owner_notice.expected_minutes")
    if given.unavailable_functions is None:
        missing.append("owner_notice.unavailable_functions ([] when none)")
    contact = _contact(given.contact, fallback, missing)
    if missing:
        raise InvalidInput(
            "a recall reaches owners and must carry an owner notice with a person to call; missing: "
            + ", ".join(missing)
        )
    assert contact is not None and given.expected_minutes is not None and given.unavailable_functions is not None
    return OwnerNotice(
        purpose=given.purpose.strip(),
        safety_recall=safety_recall,
        what_changes=given.what_changes.strip(),
        expected_minutes=given.expected_minutes,
        unavailable_functions=tuple(given.unavailable_functions),
        what_to_do=given.what_to_do,
        contact=contact,
        on_success=given.on_success,
        on_failure=given.on_failure,
    )


def _contact(given: ContactDraft | None, fallback: Contact | None, missing: list[str]) -> Contact | None:
    if given is None:
        if fallback is None:
            missing.append(
                f"owner_notice.contact (name, role, phone, email), and no default contact is configured "
                f"({DEFAULT_CONTACT_SETTINGS})"
            )
        return fallback
    blank = [f"owner_notice.contact.{f}" for f in CONTACT_FIELDS if not getattr(given, f).strip()]
    missing.extend(blank)
    if blank:
        return None
    return Contact(
        name=given.name.strip(), role=given.role.strip(), phone=given.phone.strip(), email=given.email.strip()
    )


def text_of(notice: OwnerNotice, title: str) -> str:
    """The notice as plain text, as an owner reads it (the owner-notification log keeps it)."""
    contact = notice.contact
    lines = [
        title,
        notice.purpose,
        f"What changes: {notice.what_changes}" if notice.what_changes else "",
        f"Expected duration: {notice.expected_minutes} minutes",
        "Unavailable during the update: " + (", ".join(notice.unavailable_functions) or "nothing"),
        notice.what_to_do,
        "Contact: " + ", ".join(p for p in (contact.name, contact.role, contact.phone, contact.email) if p),
    ]
    return "\n".join(line for line in lines if line)
