"""Which caller words are actions (providers/intents.py), and which profile a call gets."""

from __future__ import annotations

import pytest

from engine.config import load_config
from providers.intents import decide, offered_department
from providers.profile import AgentProfile, Department

PROFILE = AgentProfile(departments={
    "billing": Department(description="invoices, payments and refunds", digit="1", context="from-internal", extension="201"),
    "appointments": Department(description="booking or changing an appointment", digit="2", context="from-internal", extension="202"),
    "operator": Department(description="the front desk", context="from-internal", extension="0"),
})


@pytest.mark.parametrize(("said", "want"), [
    ("Can you put me through to billing please?", ("transfer", "billing")),
    ("I'd like to talk to someone about my invoice.", ("transfer", "billing")),
    ("I need to change my appointment.", ("transfer", "appointments")),
    ("Can I speak to a real person?", ("transfer", "operator")),
    ("Operator.", ("transfer", "operator")),
    ("Billing, please.", ("transfer", "billing")),
    # How Whisper tiny.en writes them on the phone line (bench/stt_wer.py --departments).
    ("Can you put me through the building, please?", ("transfer", "billing")),
    ("Can you put me to the billing, please.", ("transfer", "billing")),  # one rendition in 37 of the first
    ("Could you send me over to billing?", ("transfer", "billing")),
    ("Can I get billing, please?", ("transfer", "billing")),
    ("Can you put me on to appointments?", ("transfer", "appointments")),
    ("Could you forward me to the operator?", ("transfer", "operator")),
    ("Could you send me it over to Bill N?", ("transfer", "billing")),
    ("Can I get Bill and please?", ("transfer", "billing")),
    ("Can I get building, please?", ("transfer", "billing")),
    ("Can you put me on to a point map?", ("transfer", "appointments")),
    ("Bill and please.", ("transfer", "billing")),
    ("Building, please.", ("transfer", "billing")),
    ("I have a question about my bill. Can you transfer me to bill?", ("transfer", "billing")),
    ("I'd like to speak to Billin.", ("transfer", "billing")),
    ("I want to talk to the appointment's desk.", ("transfer", "appointments")),
    ("That's all, thank you, bye.", ("hangup", "")),
    ("Okay thanks, goodbye!", ("hangup", "")),
    ("No, that's everything. Have a nice day.", ("hangup", "")),
    ("Transfer me to the pharmacy.", None),  # not a department: the LLM answers
    ("What time do you open on Saturday?", None),
    ("How much is a cleaning?", None),
    ("Do you take credit cards for payment?", None),  # a question about payments is not a transfer
    ("Is the parking free?", None),
    ("Is the building accessible by wheelchair?", None),  # sounds like billing, but asks nothing of it
    ("Can you put me through, I'm willing to wait.", None),  # not billing: another first sound
    ("Can I get the building's address?", None),  # asks for something, but only sounds like billing
    ("Can you put me on hold?", None),
    ("Could you send me the invoice?", None),  # a department's word, but not a request to be put through
    # Wanting the department, or a thing it does, against wanting a thing named after it: the LLM answers.
    ("I need billing.", ("transfer", "billing")),
    ("Can I have the billing department, please?", ("transfer", "billing")),
    ("I want a refund for my order.", ("transfer", "billing")),
    ("I'd like a refund, the order came late.", ("transfer", "billing")),
    ("I need to change my billing address.", ("transfer", "billing")),
    ("I'd like to cancel my appointment tomorrow.", ("transfer", "appointments")),
    ("Can I have the billing address?", None),
    ("I need the billing address for a check.", None),
    ("Could I get the billing department's email?", None),
    ("Can I have the refund policy?", None),
    ("I'd like the operator's phone number.", None),
])
def test_caller_words(said, want):
    got = decide(said, PROFILE)
    assert (None if got is None else (got.kind, got.department)) == want


def test_yes_to_an_offered_transfer():
    offer = offered_department("I'm not sure about that. Shall I put you through to someone who knows?", PROFILE)
    assert offer == "operator"
    got = decide("Yes, please.", PROFILE, offer)
    assert got is not None and (got.kind, got.department) == ("transfer", "operator")
    assert decide("Yes, please.", PROFILE, None) is None
    assert decide("Yes, and when do you open?", PROFILE, offer) is None


def test_no_departments_no_transfer():
    assert decide("Put me through to billing.", AgentProfile()) is None


def test_profile_by_stasis_argument_then_dialled_extension(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(
        '[profiles.dental]\nmatch = ["dental", "100"]\nfacts = "Northside Dental"\n'
        '[profiles.pizza]\nmatch = ["200"]\ngreeting = "Luigi\'s!"\nprovider = "tone"\n'
        '[profiles.pizza.departments.kitchen]\ndigit = "3"\ncontext = "from-internal"\nextension = "230"\n'
    )
    cfg = load_config(f, env={})
    assert set(cfg.profiles) == {"default", "dental", "pizza"}
    assert cfg.profile_for(["dental"], "555") == "dental"
    assert cfg.profile_for([], "200") == "pizza"
    assert cfg.profile_for(["inbound"], "100") == "dental"
    assert cfg.profile_for([], "999") == "default"
    assert cfg.profiles["pizza"].department_for_digit("3") == "kitchen"
    assert "Luigi's!" in cfg.profiles["pizza"].fixed_phrases()
    assert "Putting you through to kitchen now." in cfg.profiles["pizza"].fixed_phrases()


@pytest.mark.parametrize(("toml", "error"), [
    ('[profiles.a.departments.x]\ncontext = "c"\n', "both context and extension"),
    ('[profiles.a.departments.x]\ncontext = "c"\nextension = "1"\nendpoint = "PJSIP/1"\n', "either context and extension, or endpoint"),
    ('[profiles.a.departments.x]\nendpoint = "1234"\n', "endpoint"),
    ('[profiles.a]\nmatch = ["1"]\n[profiles.b]\nmatch = ["1"]\n', "both match '1'"),
    ('[profiles.a]\nprovider = "openai"\n', "unknown provider"),
    ('[profiles.a.departments.x]\ndigit="1"\nendpoint = "PJSIP/1"\n[profiles.a.departments.y]\ndigit="1"\nendpoint = "PJSIP/2"\n', "both use digit 1"),
])
def test_bad_profiles_are_refused_with_the_reason(tmp_path, toml, error):
    from engine.config import ConfigError

    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError, match=error):
        load_config(f, env={})
