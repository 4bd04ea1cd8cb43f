"""Every sentence the LLM says is checked against the business's facts before it is spoken
(providers/facts/verify.py): a wrong day, time, price, phone number or name is never said; a
question the data answers is answered from it, without the LLM."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import tomllib
from pathlib import Path

import pytest

from engine.config import AppConfig, plan_reload
from providers.base import Transcript
from providers.facts.verify import FactGuard
from providers.profile import AgentProfile
from tests.conftest import BIN, ROOT
from tests.test_pipeline_turns import LOUD, Rig

NY = dt.timezone(dt.timedelta(hours=-5))
MONDAY_10AM = dt.datetime(2026, 12, 7, 10, 0, tzinfo=NY)
DENTAL = AgentProfile.model_validate({
    "greeting": "",
    "facts": "Children are welcome from the age of three. The kitchen of the staff room closes at 3 pm.",
    "business": {
        "name": "Harbor Dental", "timezone": "America/New_York",
        "hours": {"monday": "8:00-12:00, 13:00-18:00", "tuesday": "8-18", "wednesday": "8-18", "thursday": "8-18",
                  "friday": "8am-4pm", "saturday": "9am-1pm", "sunday": "closed"},
        "special_days": [{"date": "2026-12-25", "hours": "closed", "note": "Christmas Day"}],
        "address": "14 Harbour Street, Springfield",
        "phones": {"main": "555 0100", "emergency": "555 0199"},
        "people": [{"name": "Dr. Maria Lopez", "role": "dentist"}, {"name": "Dr. James Chen", "role": "dentist"}],
        "services": [{"name": "cleaning", "price": 90}, {"name": "check-up", "aliases": ["checkup"], "price": 65}],
    },
})


def guard(profile: AgentProfile = DENTAL) -> FactGuard:
    return FactGuard(profile.known, facts_text=profile.facts, unknown=profile.unknown_answer)


@pytest.mark.parametrize(("question", "sentence"), [
    ("Are you open on Sunday?", "Yes, we are open on Sunday."),
    ("Can I come at the weekend?", "Sure, we're open all weekend."),
    ("When do you close on Friday?", "On Friday we close at 6 pm."),  # another day's hours
    ("When do you close on Friday?", "We close at 5 pm."),  # the question's day
    ("What are your hours?", "We are open every day from 8 am."),
    ("How much is a cleaning?", "A cleaning costs $65."),  # the check-up's price
    ("How much is a cleaning?", "That would be 120 dollars."),
    ("What's the emergency number?", "Call 555 0198 any time."),
    ("Who are the dentists?", "Dr. Smith and Dr. Lopez."),
    ("Who are the dentists?", "Our dentists are Maria Lopez and Sarah Kim."),  # a name with no title
    ("Can I come in on Sunday?", "Sure, come by any time!"),  # a yes to the question's day
    ("Can I come in on Saturday?", "No, sorry."),
    ("When do you close on Tuesday?", "We're open until five."),  # an hour without am or pm
    ("Where are you?", "We're at 22 Oak Street."),
    ("How much is a cleaning?", "A cleaning is eighty dollars."),  # numbers as words
    ("When do you close on Friday?", "We close at nine thirty p.m. on Fridays."),
    ("When do you close?", "We close at 15 pm."),  # no time at all
    ("Are you open on Christmas?", "Yes!"),  # a date the rules read: closed
    ("Are you open on Easter Monday?", "Yes, we are open on Easter Monday."),  # a day the data cannot pin down
    ("Do you do sedation?", "Yes, we offer sedation for nervous patients."),  # nothing in the data of sedation
    ("Can I come on Sunday?", "You do not know and offer to put the caller through to someone who does."),  # the instructions
    ("Are you open on Easter Monday?", "Yes, we're open on Monday from 8 am."),  # a holiday the data has no date for
    ("Could I rent the Harbor room for a party?", "Yes, you can rent the Harbor room for a party."),  # most of it unknown
    ("Do you see children?", "No, we do not see children."),  # the facts welcome them
    ("Is there a lift to the surgery?", "No, there is no lift."),
    ("Do you do dental implants?", "Yes, we do dental implants."),  # "dental" is only the practice's name  # nothing in the data of a lift either way
    ("When is the next open day?", "Our next open day is March 27."),  # a date the data does not give
])
def test_a_sentence_that_contradicts_the_data_is_not_spoken(question: str, sentence: str) -> None:
    instead = guard().check(sentence, question, MONDAY_10AM)
    assert instead is not None and instead != sentence


@pytest.mark.parametrize(("question", "sentence"), [
    ("Are you open on Sunday?", "No, we're closed on Sundays."),
    ("What are your hours?", "We're open Monday to Thursday 8 am to 6 pm, and closed on Sunday."),
    ("When do you close on Friday?", "We close at 4 pm on Fridays."),
    ("When do you open on Saturday?", "Saturday we are open 9 to 1."),
    ("Do you close for lunch?", "On Mondays we close from noon to 1 pm."),
    ("How much is a cleaning?", "A cleaning is 90 dollars."),
    ("How much is a check-up?", "A checkup costs $65."),
    ("What's the emergency number?", "For emergencies call 555 0199."),
    ("Who are the dentists?", "Dr. Maria Lopez and Dr. James Chen."),
    ("When do you close on Tuesday?", "We're open until six."),
    ("Are you open right now?", "Yes, we're open right now."),  # Monday 10 am in New York
    ("Where are you?", "We're at 14 Harbour Street."),
    ("How much is a cleaning?", "A cleaning is ninety dollars."),
    ("Can my kid come?", "Children are welcome from the age of three."),
    ("When does the kitchen close?", "The kitchen closes at 3 pm."),  # a time the free text gives
    ("Hello?", "Hello! How can I help you today?"),
    ("Are you open on Christmas Day?", "No, we're closed on December 25th."),
])
def test_a_sentence_the_data_bears_out_is_spoken(question: str, sentence: str) -> None:
    assert guard().check(sentence, question, MONDAY_10AM) is None


@pytest.mark.parametrize(("question", "sentence"), [
    ("Are you open on Saturday?", "I'm open on Saturday from 9:00 AM to 5:00 PM."),
    ("What are your hours?", "We're open Monday to Friday, nine to five."),
    ("How much is a haircut?", "A haircut is 25 dollars."),
    ("What's your number?", "You can reach us on 555 1234."),
])
def test_with_no_facts_at_all_nothing_about_the_business_is_stated(question: str, sentence: str) -> None:
    default = AgentProfile()
    assert guard(default).check(sentence, question, MONDAY_10AM) == default.unknown_answer


def test_with_no_facts_the_llm_is_told_it_knows_nothing_of_the_business() -> None:
    assert "cannot answer questions about the business" in AgentProfile().instructions()
    assert "Harbor Dental" in DENTAL.instructions() and "555 0199" in DENTAL.instructions()


async def ask(rig: Rig) -> list[str]:
    rig.call.utterance_started()
    await rig.frames(LOUD, 15)
    rig.call.utterance_ended(fallback=False)
    await rig.run()
    return [e.text for e in rig.seen(Transcript) if e.role == "agent"]


async def test_a_wrong_sentence_of_the_llm_is_replaced_and_the_rest_of_its_answer_dropped() -> None:
    rig = Rig(["Could I bring my son in after church?"], reply="We see children of all ages. We are open on Sunday from 10 am. See you then.", profile=DENTAL)
    heard = await ask(rig)
    assert rig.llm.prompts == ["Could I bring my son in after church?"]
    assert len(heard) == 2 and heard[0] == "We see children of all ages."
    assert "Sunday from 10" not in heard[1] and "See you then." not in heard
    await rig.call.stop()


async def test_with_no_facts_invented_hours_are_replaced_by_the_honest_line() -> None:
    profile = AgentProfile(greeting="")
    rig = Rig(["Are you open on Saturday?"], reply="I'm open on Saturday from 9:00 AM to 5:00 PM.", profile=profile)
    assert await ask(rig) == [profile.unknown_answer]
    await rig.call.stop()


async def test_a_question_the_data_answers_is_answered_from_it_without_the_llm() -> None:
    rig = Rig(["Are you open on Sunday?"], reply="Yes, we are open on Sunday.", profile=DENTAL)
    heard = await ask(rig)
    assert rig.llm.prompts == []
    assert len(heard) == 1 and "closed" in heard[0].lower() and "sunday" in heard[0].lower()
    await rig.call.stop()


def test_the_readmes_profile_is_a_valid_profile_with_its_facts_as_data() -> None:
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## A profile"):].split("```toml\n")[1].split("```")[0]
    profile = AgentProfile.model_validate(tomllib.loads(block)["profiles"]["dental"])
    assert profile.known.hours_on(dt.date(2026, 12, 25)) == ()
    assert len(profile.known.people) == 2 and profile.known.phones["emergency"] == "555 0199"


def test_check_config_names_a_bad_field_and_shows_what_free_text_was_read_as(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[profiles.dental.business.hours]\nmonday = "8-25"\n')
    r = subprocess.run([BIN / "aiagent-tui", "--config", str(bad), "check-config"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode != 0 and "profiles.dental.business.hours" in r.stderr and "monday" in r.stderr
    good = tmp_path / "good.toml"
    good.write_text('[profiles.shop]\nfacts = "Open Monday to Friday 9 am to 5 pm, closed on Sunday. For orders call 555 0142."\n')
    r = subprocess.run([BIN / "aiagent-tui", "--config", str(good), "check-config"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    read = json.loads(r.stdout)["profiles"]["shop"]["facts_read_as"]
    assert read["hours"]["monday"] == "09:00-17:00" and read["hours"]["sunday"] == "closed"
    assert "5550142" in {n.replace(" ", "") for n in read["phones"].values()}


def test_a_reload_applies_changed_business_hours_to_new_calls() -> None:
    running = AppConfig.model_validate({"profiles": {"dental": DENTAL.model_dump()}})
    changed = DENTAL.model_dump()
    changed["business"]["hours"]["saturday"] = "closed"
    plan = plan_reload(running, AppConfig.model_validate({"profiles": {"dental": changed}}))
    assert plan.applied == ("profiles.dental.business.hours.saturday",) and not plan.restart
    assert plan.config.profiles["dental"].known.hours_on(dt.date(2026, 12, 12)) == ()


def test_a_holiday_the_free_text_closes_is_not_said_to_be_open() -> None:
    profile = AgentProfile(facts="Open daily 9-5. Closed Christmas Day and New Year's Day.")
    assert profile.known.weekly("friday") is not None  # the closed holidays leave the week's hours read
    g = guard(profile)
    found = g.answer("Are you open on Christmas?", MONDAY_10AM)
    assert found is not None and "closed" in found.text
    instead = g.check("Yes, we're open on Christmas Day.", "Are you open on Christmas?", MONDAY_10AM)
    assert instead is not None and "closed" in instead
    # A movable feast has no date here: neither a yes nor a no is said.
    assert g.check("Yes, we're open on Easter Monday.", "Are you open on Easter Monday?", MONDAY_10AM) == profile.unknown_answer


async def test_with_llm_answers_off_the_agent_answers_only_from_the_data() -> None:
    strict = DENTAL.model_copy(update={"llm_answers": False})
    rig = Rig(["When do you close on Friday?", "Do you do implants?"], reply="Yes, we do implants.", profile=strict)
    heard = await ask(rig)
    assert len(heard) == 1 and "4 pm" in heard[0]
    heard = await ask(rig)
    assert heard[1:] == [strict.unknown_answer] and rig.llm.prompts == []
    await rig.call.stop()
