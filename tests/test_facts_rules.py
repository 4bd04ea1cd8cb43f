"""Answers from a business's data (providers/facts/rules.py): questions as Whisper writes them,
answered right for the date and time in the business's zone, and None whenever the data does not
hold the answer or the question is not clearly about it."""

from __future__ import annotations

import datetime as dt

import pytest

from providers.facts.rules import Asked, answer
from providers.facts.schema import Business

WEEKDAY_HOURS = "8:00-12:00, 13:00-18:00"
CLINIC = Business.model_validate({
    "name": "Bright Smile Dental", "timezone": "America/New_York", "currency": "USD",
    "hours": {"monday": WEEKDAY_HOURS, "tuesday": WEEKDAY_HOURS, "wednesday": WEEKDAY_HOURS, "thursday": WEEKDAY_HOURS,
              "friday": WEEKDAY_HOURS, "saturday": "9am-1pm", "sunday": "closed"},
    "special_days": [{"date": "2026-12-25", "hours": "closed", "note": "Christmas Day"},
                     {"date": "2026-12-24", "hours": "9:00-12:00", "note": "Christmas Eve"}],
    "address": "14 Elm Street, Springfield",
    "directions": "Free parking behind the building; the number 12 bus stops at the door.",
    "phones": {"main": "555 0199", "emergency": "555 0142", "fax": "555 0100"},
    "people": [{"name": "Dr. Maria Lopez", "role": "dentist", "note": "works Mondays and Thursdays"},
               {"name": "Dr. James Chen", "role": "dentist"},
               {"name": "Anna Berg", "role": "hygienist"}],
    "services": [{"name": "cleaning", "aliases": ["teeth cleaning", "hygiene visit"], "price": 80},
                 {"name": "filling", "price": 120, "price_note": "from"},
                 {"name": "teeth whitening", "aliases": ["whitening"], "price": 300},
                 {"name": "consultation", "price": 0},
                 {"name": "crown", "price_note": "it depends on the tooth"},
                 {"name": "root canal"}],
    "faq": [{"questions": ["Do you take insurance?", "Which insurance do you accept?"], "answer": "We accept most major dental insurance plans."},
            {"questions": ["Do you take walk-ins?", "Can I come without an appointment?"], "answer": "We see walk-ins when we can, but an appointment is best."}],
})
RESTAURANT = Business.model_validate({
    "name": "Trattoria Luna", "timezone": "Europe/Berlin", "currency": "EUR",
    "hours": {"monday": "closed", "tuesday": "17:00-23:00", "wednesday": "17:00-23:00", "thursday": "17:00-23:00",
              "friday": "17:00-02:00", "saturday": "17:00-02:00", "sunday": "12:00-15:00, 17:00-22:00"},
    "address": "Kastanienallee 7, Berlin",
    "phones": {"main": "030 555 0123", "reservations": "030 555 0124"},
    "people": [{"name": "Luca Romano", "role": "head chef"}, {"name": "Giulia Romano", "role": "owner"}],
    "services": [{"name": "set menu", "aliases": ["tasting menu"], "price": 45}, {"name": "corkage", "price": 10, "price_note": "per bottle"},
                 {"name": "kids menu", "aliases": ["children's menu"], "price": 12.5}],
    "faq": [{"questions": ["Do you have vegetarian options?", "Is there vegetarian food?"], "answer": "Yes, about half the menu is vegetarian."}],
})
GARAGE = Business.model_validate({
    "name": "Miller Auto Repair", "timezone": "America/Chicago",
    "hours": {day: "7:30 am - 5:30 pm" for day in ("monday", "tuesday", "wednesday", "thursday", "friday")} | {"saturday": "8-12", "sunday": "closed"},
    "address": "2200 Industrial Parkway, Joliet",
    "phones": {"main": "(815) 555-0170", "towing": "(815) 555-0171"},
    "people": [{"name": "Bob Miller", "role": "owner"}, {"name": "Tony Alvarez", "role": "mechanic"}, {"name": "Rita Shaw", "role": "mechanic"}],
    "services": [{"name": "oil change", "price": 49.99}, {"name": "tire rotation", "aliases": ["tyre rotation"], "price": 25},
                 {"name": "brake inspection", "price": 0}, {"name": "diagnostic", "aliases": ["check engine light"], "price": 89, "price_note": "per hour"},
                 {"name": "engine repair"}],
    "faq": [{"questions": ["Do you have loaner cars?", "Can I get a courtesy car?"], "answer": "We have two loaner cars; ask when you book."}],
})

TOWN = Business.model_validate({
    "name": "Springfield Town Hall", "timezone": "America/Denver", "holidays_closed": True,
    "hours": {"monday": "8:30-16:30", "tuesday": "8:30-16:30", "wednesday": "8:30-16:30", "thursday": "8:30-16:30", "friday": "8:30-12:00",
              "saturday": "closed", "sunday": "closed"},
    "special_days": [{"date": "2026-12-25", "note": "Christmas Day"}, {"date": "2027-01-01", "note": "New Year's Day"},
                     {"date": "2026-12-16", "hours": "8:30-12:00", "note": "staff training"}],
    "address": "1 Main Street, Springfield", "directions": "Park in the lot on Oak Street; the entrance is on the side.",
    "phones": {"main": "555 0300", "permits": "555 0301", "water_emergency": "555 0399"},
    "email": "clerk@springfield.gov", "website": "https://springfield.gov",
    "people": [{"name": "Linda Park", "role": "town clerk"}, {"name": "Tom Ruiz", "role": "building inspector", "note": "in the office Tuesday mornings"}],
    "services": [{"name": "dog license", "aliases": ["dog licence", "dog tag"], "price": 15},
                 {"name": "birth certificate copy", "aliases": ["birth certificate"], "price": 20},
                 {"name": "building permit", "price_note": "depends on the project value"}, {"name": "parking permit", "price": 0}],
    "faq": [{"questions": ["How do I pay my water bill?", "Can I pay the water bill online?"], "answer": "You can pay online at our website or at the front desk."}],
})
SHOP = Business.model_validate({
    "name": "Spoke and Pedal", "timezone": "Europe/London", "currency": "GBP",
    "hours": {"tuesday": "10-6", "wednesday": "10-6", "thursday": "10am-7pm", "friday": "10-6", "saturday": "9-5", "sunday": "closed", "monday": "closed"},
    "address": "22 Mill Lane, Bristol",
    "phones": {"shop": "0117 496 0123"},
    "people": [{"name": "Priya Shah", "role": "owner"}, {"name": "Dan Cole", "role": "mechanic", "note": "does wheel builds"}],
    "services": [{"name": "puncture repair", "aliases": ["flat tyre repair", "flat tire repair"], "price": 15},
                 {"name": "tune up", "aliases": ["service"], "price": 75, "price_note": "from"},
                 {"name": "bike hire", "aliases": ["bike rental"], "price": 30, "price_note": "per day"}],
    "faq": [{"questions": ["Can I return something?", "What is your returns policy?"], "answer": "Unused items can be returned within 30 days with a receipt."}],
})


def at(business: Business, year: int, month: int, day: int, hour: int, minute: int = 0) -> dt.datetime:
    """A local time of ``business``, given as UTC (as the pipeline's clock gives it)."""
    return dt.datetime(year, month, day, hour, minute, tzinfo=business.zone).astimezone(dt.UTC)


MONDAY_MORNING = at(CLINIC, 2026, 12, 7, 9, 30)
SATURDAY_EVENING = at(CLINIC, 2026, 12, 12, 19, 0)
CHRISTMAS_EVE = at(CLINIC, 2026, 12, 24, 10, 0)
AFTER_LATE_NIGHT = at(RESTAURANT, 2026, 12, 12, 0, 30)  # Saturday, Friday's evening still open
GARAGE_SATURDAY = at(GARAGE, 2026, 12, 12, 19, 0)


def said(question: str, business: Business = CLINIC, now: dt.datetime = MONDAY_MORNING, previous: Asked | None = None) -> str | None:
    found = answer(question, business, now, previous)
    return found.text if found else None


@pytest.mark.parametrize(("question", "want"), [
    ("r u open sundays", "No, we're closed on Sundays."),
    ("Are you open on Sunday?", "No, we're closed on Sunday."),
    ("are you guys closed on sunday", "Yes, we're closed on Sunday."),
    ("Are you open today?", "Yes, we're open today, from 8 am to noon and 1 pm to 6 pm."),
    ("are you open on saturday", "Yes, we're open on Saturday, from 9 am to 1 pm."),
    ("Is the clinic open Saturdays?", "Yes, we're open on Saturdays, from 9 am to 1 pm."),
    ("are you open now", "Yes, we're open now until noon, then again from 1 pm to 6 pm."),
    ("Are you still open?", "Yes, we're open now until noon, then again from 1 pm to 6 pm."),
    ("what time do you guys close on friday", "On Friday, we close at 6 pm."),
    ("When do you close on Friday?", "On Friday, we close at 6 pm."),
    ("how late are you open on saturdays", "On Saturdays, we close at 1 pm."),
    ("what time do you open tomorrow", "Tomorrow, Tuesday, we open at 8 am."),
    ("what time did you open today", "Today, we opened at 8 am."),
    ("What time y'all open tomorrow morning?", "Tomorrow, Tuesday, we open at 8 am."),
    ("when are you guys open on saturday", "On Saturday, we're open from 9 am to 1 pm."),
    ("What are Saturday's hours?", "On Saturday, we're open from 9 am to 1 pm."),
    ("what time do you close", "We're open now until noon, then again from 1 pm to 6 pm."),
    ("What are your hours?", "We're open Monday to Friday 8 am to noon and 1 pm to 6 pm, and Saturday 9 am to 1 pm; we are closed on Sunday."),
    ("what are your opening hours", "We're open Monday to Friday 8 am to noon and 1 pm to 6 pm, and Saturday 9 am to 1 pm; we are closed on Sunday."),
    ("when are you open on saturday", "On Saturday, we're open from 9 am to 1 pm."),
    ("do you close for lunch on wednesday", "Yes, we close from noon to 1 pm on Wednesday."),
    ("are you open at lunchtime on tuesday", "No, we close from noon to 1 pm on Tuesday."),
    ("do you close for lunch", "Monday to Friday, we close from noon to 1 pm; Saturday, we're open from 9 am to 1 pm."),
    ("are you open this weekend", "Saturday, we're open from 9 am to 1 pm; Sunday, we're closed."),
    ("are you open on weekdays", "Yes: Monday to Friday, we're open from 8 am to noon and 1 pm to 6 pm."),
    ("are you open saturday afternoon", "No, on Saturday, we're open from 9 am to 1 pm."),
    ("are you open saturday morning", "Yes, we're open on Saturday, from 9 am to 1 pm."),
    ("are you open tonight", "No, today, we're open from 8 am to noon and 1 pm to 6 pm."),
    ("good morning, are you open in the afternoon", "Yes, we're open today, from 8 am to noon and 1 pm to 6 pm."),
    ("are you open at 7 pm", "No, today, we're open from 8 am to noon and 1 pm to 6 pm."),
    ("are you open at 8", "Yes, we're open at 8 am today, until noon."),
    ("are you open after 5 today", "Yes, we're open at 5 pm today, until 6 pm."),
    ("Are you open until 6?", "We're open now until noon, then again from 1 pm to 6 pm."),
    ("Hi, my name is John, are you guys open on Saturday?", "Yes, we're open on Saturday, from 9 am to 1 pm."),
    ("Hi, yes, I was wondering if you're open on Saturday.", "Yes, we're open on Saturday, from 9 am to 1 pm."),
    ("is the practice open today", "Yes, we're open today, from 8 am to noon and 1 pm to 6 pm."),
    ("do you work on saturdays", "Yes, we're open on Saturdays, from 9 am to 1 pm."),
    ("are you closing early today", "Today, we close at 6 pm."),
    ("do you open early on mondays", "On Mondays, we open at 8 am."),
    ("are you open on sunday or monday", "Sunday, we're closed; Monday, we're open from 8 am to noon and 1 pm to 6 pm."),
    ("are you open on monday the 14th", "Yes, we're open on Monday, December 14th, from 8 am to noon and 1 pm to 6 pm."),
    ("can I come in at 12:30 today? are you open then", "No, today, we're open from 8 am to noon and 1 pm to 6 pm."),
    # special days override the weekday
    ("are you open on christmas", "No, we're closed on Christmas Day, Friday, December 25th."),
    ("Are you open on the 25th?", "No, we're closed on Christmas Day, Friday, December 25th."),
    ("are you open december 25th", "No, we're closed on Christmas Day, Friday, December 25th."),
    ("what are your hours on christmas eve", "On Christmas Eve, Thursday, December 24th, we're open from 9 am to noon."),
    ("are you open on the 26th", "Yes, we're open on Saturday, December 26th, from 9 am to 1 pm."),
])
def test_clinic_hours_on_a_monday_morning(question: str, want: str) -> None:
    assert said(question) == want


@pytest.mark.parametrize(("question", "want"), [
    ("are you open", "No, we're closed right now; we open again on Monday, at 8 am."),
    ("are you open tomorrow", "No, we're closed tomorrow, Sunday."),
    ("are you open today", "Today we were open from 9 am to 1 pm; we're closed now; we open again on Monday, at 8 am."),
    ("when do you open", "We're closed right now; we open again on Monday, at 8 am."),
    ("what time do you close today", "Today, we closed at 1 pm."),
    ("are you open on friday", "Yes, we're open on Friday, from 8 am to noon and 1 pm to 6 pm."),
    ("are you open on fridays", "Yes, we're open on Fridays, from 8 am to noon and 1 pm to 6 pm."),
])
def test_clinic_on_a_saturday_evening(question: str, want: str) -> None:
    assert said(question, now=SATURDAY_EVENING) == want


@pytest.mark.parametrize(("question", "want"), [
    ("are you open today", "Yes, we're open today, Christmas Eve, from 9 am to noon."),
    ("are you open now", "Yes, we're open now until noon."),
    ("what time do you close today", "Today, Christmas Eve, we close at noon."),
    ("are you open tomorrow", "No, we're closed tomorrow, Christmas Day, Friday."),
    ("do you close for lunch today", "No, we don't close for lunch today, Christmas Eve."),
    ("what are your hours", "We're open Monday to Friday 8 am to noon and 1 pm to 6 pm, and Saturday 9 am to 1 pm; we are closed on Sunday. "
                            "Today, Christmas Eve, we're open from 9 am to noon. We're closed tomorrow, Christmas Day, Friday."),
])
def test_christmas_eve(question: str, want: str) -> None:
    assert said(question, now=CHRISTMAS_EVE) == want


def test_a_weekday_said_once_is_its_coming_date_when_that_has_special_hours() -> None:
    saturday_before = at(CLINIC, 2026, 12, 19, 11, 0)
    assert said("are you open on friday", now=saturday_before) == "No, we're closed on Christmas Day, Friday, December 25th."
    assert said("are you open on fridays", now=saturday_before) == "Yes, we're open on Fridays, from 8 am to noon and 1 pm to 6 pm."
    assert said("are you open thursday", now=saturday_before) == "Yes, we're open on Christmas Eve, Thursday, December 24th, from 9 am to noon."


def test_holidays_by_name() -> None:
    every_day = {d: "9-5" for d in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")}
    b = Business.model_validate({"hours": every_day, "special_days": [{"date": "2026-12-31", "hours": "9-12", "note": "New Year's Eve"}]})
    monday = at(b, 2026, 12, 7, 10)
    assert said("are you open on new year's eve", b, monday) == "Yes, we're open on New Year's Eve, Thursday, December 31st, from 9 am to noon."
    assert said("are you open new years eve", b, monday) == "Yes, we're open on New Year's Eve, Thursday, December 31st, from 9 am to noon."
    assert said("are you open on valentine's day", b, monday) is None  # the data does not say
    assert said("are you open on new years day", b, monday) is None


def test_closed_today_says_when_it_opens_again() -> None:
    sunday = at(CLINIC, 2026, 12, 13, 10, 0)
    assert said("are you open today", now=sunday) == "No, we're closed today; we open again tomorrow, Monday, at 8 am."
    assert said("when do you open", now=sunday) == "We're closed today; we open again tomorrow, Monday, at 8 am."


def test_after_closing_on_christmas_eve_the_next_opening_skips_christmas() -> None:
    assert said("are you open", now=at(CLINIC, 2026, 12, 24, 12, 30)) == "No, we're closed right now; we open again on Saturday, at 9 am."


@pytest.mark.parametrize(("question", "want"), [
    ("are you open now", "Yes, we're open now until 2 am."),
    ("are you still open", "Yes, we're open now until 2 am."),
    ("what time do you close", "We're open now until 2 am."),
    ("are you open tonight", "Yes, we're open today, from 5 pm to 2 am."),
    ("are you open tomorrow morning", "No, tomorrow, Sunday, we're open from noon to 3 pm and 5 pm to 10 pm."),
    ("are you open on sunday afternoon", "We're open on Sunday, from noon to 3 pm and 5 pm to 10 pm."),  # part of it
    ("are you open at 1 am on saturday", "Yes, we're open at 1 am on Saturday, until 2 am."),
    ("are you open at 8 tonight", "Yes, we're open at 8 pm today, until 2 am."),
    ("are you open at nine tonight", "Yes, we're open at 9 pm today, until 2 am."),
    ("are you open at five thirty on sunday", "Yes, we're open at 5:30 pm on Sunday, until 10 pm."),
    ("are you open until midnight on tuesday", "On Tuesday, we close at 11 pm."),
    ("are you open at 1 am on sunday", "On Sunday, we're open from noon to 3 pm and 5 pm to 10 pm."),  # Saturday's night or Sunday's: no yes or no
    ("are you open at 1 am on tuesday", "No, on Tuesday, we're open from 5 pm to 11 pm."),
    ("are you open on monday", "No, we're closed on Monday."),
    ("what time do you open on sunday", "On Sunday, we open at noon."),
    ("do you take a break on sundays", "Yes, we close from 3 pm to 5 pm on Sundays."),
    ("what are your hours", "We're open Tuesday to Thursday 5 pm to 11 pm, Friday and Saturday 5 pm to 2 am, and Sunday noon to 3 pm and 5 pm to 10 pm; "
                            "we are closed on Monday."),
])
def test_restaurant_past_midnight(question: str, want: str) -> None:
    assert said(question, RESTAURANT, AFTER_LATE_NIGHT) == want


def test_restaurant_closed_after_its_late_night() -> None:
    assert said("are you open", RESTAURANT, at(RESTAURANT, 2026, 12, 12, 2, 30)) == "No, we're closed right now; we open today at 5 pm."


@pytest.mark.parametrize(("question", "want"), [
    ("are you open", "No, we're closed right now; we open again on Monday, at 7:30 am."),
    ("what time do you close on saturday", "On Saturday, we close at noon."),
    ("are you open at 3 on saturday", "No, on Saturday, we're open from 8 am to noon."),
    ("What are your hours?", "We're open Monday to Friday 7:30 am to 5:30 pm, and Saturday 8 am to noon; we are closed on Sunday."),
    ("do you close for lunch", "No, we don't close for lunch."),
])
def test_garage_hours(question: str, want: str) -> None:
    assert said(question, GARAGE, GARAGE_SATURDAY) == want


@pytest.mark.parametrize(("business", "question", "want"), [
    (CLINIC, "what's your address", "We're at 14 Elm Street, Springfield."),
    (CLINIC, "Where are you located?", "We're at 14 Elm Street, Springfield."),
    (CLINIC, "where is your office", "We're at 14 Elm Street, Springfield."),
    (CLINIC, "do you have a fax", "The fax number is 555 0100."),
    (CLINIC, "do you have an emergency line", "The emergency number is 555 0142."),
    (CLINIC, "what's the best number to reach you", "Our number is 555 0199."),
    (CLINIC, "what street are you on", "We're at 14 Elm Street, Springfield."),
    (CLINIC, "what's the main number", "Our number is 555 0199."),
    (CLINIC, "what's the number for emergencies", "The emergency number is 555 0142."),
    (RESTAURANT, "where are you", "We're at Kastanienallee 7, Berlin."),
    (CLINIC, "where do i park", "Free parking behind the building; the number 12 bus stops at the door."),
    (CLINIC, "How do I get there?", "Free parking behind the building; the number 12 bus stops at the door."),
    (CLINIC, "what's the emergency number", "The emergency number is 555 0142."),
    (CLINIC, "is there an urgent number", "The emergency number is 555 0142."),
    (CLINIC, "What's your fax number?", "The fax number is 555 0100."),
    (CLINIC, "what's your phone number", "Our number is 555 0199."),
    (GARAGE, "what number do I call for towing", "The towing number is (815) 555-0171."),
    (RESTAURANT, "what's the number for reservations", "The reservations number is 030 555 0124."),
])
def test_places_and_numbers(business: Business, question: str, want: str) -> None:
    assert said(question, business) == want


@pytest.mark.parametrize(("business", "question", "want"), [
    (CLINIC, "who are the dentists", "Our dentists are Dr. Maria Lopez and Dr. James Chen."),
    (CLINIC, "who works there", "Our dentists are Dr. Maria Lopez and Dr. James Chen, and our hygienist is Anna Berg."),
    (CLINIC, "do you have a hygienist", "Our hygienist is Anna Berg."),
    (CLINIC, "is doctor lopez in on mondays", "Yes. Dr. Maria Lopez, our dentist: works Mondays and Thursdays."),
    (CLINIC, "is dr lopes in on tuesday", "No. Dr. Maria Lopez, our dentist: works Mondays and Thursdays."),
    (CLINIC, "does dr lopez work on mondays", "Yes. Dr. Maria Lopez, our dentist: works Mondays and Thursdays."),
    (CLINIC, "is dr lopez in on christmas", "No, we're closed on Christmas Day, Friday, December 25th."),
    (CLINIC, "how many dentists do you have", "Our dentists are Dr. Maria Lopez and Dr. James Chen."),
    (CLINIC, "what's the dentist's name", "Our dentists are Dr. Maria Lopez and Dr. James Chen."),
    (RESTAURANT, "who is the owner", "Our owner is Giulia Romano."),
    (RESTAURANT, "who's the chef", "Our head chef is Luca Romano."),
    (GARAGE, "who are the mechanics", "Our mechanics are Tony Alvarez and Rita Shaw."),
])
def test_people(business: Business, question: str, want: str) -> None:
    assert said(question, business) == want


@pytest.mark.parametrize(("business", "question", "want"), [
    (CLINIC, "how much is a cleaning", "Cleaning costs $80."),
    (CLINIC, "How much are cleanings?", "Cleaning costs $80."),
    (CLINIC, "what do you charge for a hygiene visit", "Cleaning costs $80."),
    (CLINIC, "what does a filing cost", "Filling costs from $120."),  # Whisper's spelling
    (CLINIC, "price of whitening", "Teeth whitening costs $300."),
    (CLINIC, "how much is a consultation", "Consultation is free."),
    (CLINIC, "how much is a crown", "There's no fixed price for crown: it depends on the tooth."),
    (RESTAURANT, "how much is the tasting menu", "Set menu costs €45."),
    (RESTAURANT, "what does corkage cost", "Corkage costs €10 per bottle."),
    (RESTAURANT, "how much is the children's menu", "Kids menu costs €12.50."),
    (GARAGE, "how much is an oil change", "Oil change costs $49.99."),
    (GARAGE, "how much for a tyre rotation", "Tire rotation costs $25."),
    (GARAGE, "what do you charge for a check engine light", "Diagnostic costs $89 per hour."),
])
def test_prices(business: Business, question: str, want: str) -> None:
    assert said(question, business) == want


@pytest.mark.parametrize(("business", "question", "want"), [
    (CLINIC, "do you take insurance", "We accept most major dental insurance plans."),
    (CLINIC, "Which insurance plans do you accept?", "We accept most major dental insurance plans."),
    (CLINIC, "are you open for walk ins", "We see walk-ins when we can, but an appointment is best."),
    (RESTAURANT, "is there any vegetarian food", "Yes, about half the menu is vegetarian."),
    (GARAGE, "can I get a courtesy car", "We have two loaner cars; ask when you book."),
])
def test_faq(business: Business, question: str, want: str) -> None:
    assert said(question, business) == want


@pytest.mark.parametrize(("business", "question"), [
    (CLINIC, "how much is a root canal"),  # no price
    (CLINIC, "how much is a cleaning for kids"),  # more than the service asked
    (CLINIC, "how much is an implant"),  # no such service
    (CLINIC, "is there a female doctor"),  # the data does not say
    (CLINIC, "are you open on thanksgiving"),  # not dated in the data
    (CLINIC, "are you open on new year's day"),  # a holiday the data says nothing about
    (CLINIC, "are you open on january 1st"),
    (CLINIC, "Are you open the day after Christmas?"),
    (CLINIC, "Are you open the week of Christmas?"),
    (CLINIC, "are you open on new year's eve"),
    (CLINIC, "are you open on public holidays"),
    (CLINIC, "what number do I call for towing"),  # the clinic has none
    (CLINIC, "i have a toothache"),
    (CLINIC, "can i book an appointment"),
    (CLINIC, "do you take cash"),
    (CLINIC, "what time does dr lopez start"),
    (CLINIC, "how many hours does a cleaning take"),
    (CLINIC, "are you open on tuesday the 14th"),  # the 14th is a Monday
    (CLINIC, "are you open 24 hours"),
    (CLINIC, "who works on saturdays"),
    (CLINIC, "who am i speaking to"),
    (CLINIC, "Hello, is this the dentist?"),
    (CLINIC, "Is the doctor in today?"),
    (CLINIC, "Are you open to new patients?"),
    (CLINIC, "Is the office closed for the holidays?"),
    (CLINIC, "How late can I book?"),
    (CLINIC, "how much is it"),
    (CLINIC, "is there a line"),  # a queue, not a phone line
    (RESTAURANT, "how much is the set menu on saturdays"),  # prices, numbers, places: not by day
    (CLINIC, "what's the number to call tonight"),
    (CLINIC, "is dr chen working tomorrow"),
    (CLINIC, "where is the bathroom"),
    (CLINIC, "how much is a deep cleaning"),
    (CLINIC, "how much is a cleaning and a filling"),
    (CLINIC, "how much do you charge"),
    (RESTAURANT, "what time does the kitchen close"),
    (RESTAURANT, "is luca there tonight"),
    (GARAGE, "do you do breaks"),  # brakes, as Whisper writes them: not a lunch break
    (GARAGE, "how much is engine repair"),
    (GARAGE, "is this miller auto repair"),
    (Business(), "are you open"),
    (Business(), "what's your address"),
    (Business(hours={"monday": "9-5"}), "are you open on tuesday"),  # a day the data does not give
])
def test_no_answer_when_the_data_does_not_hold_it(business: Business, question: str) -> None:
    assert said(question, business) is None


def test_people_by_what_their_notes_say() -> None:
    clinic = Business.model_validate({"people": [{"name": "Dr. Ana Ruiz", "role": "physician", "note": "female, speaks Spanish"},
                                                 {"name": "Dr. Tom Lee", "role": "physician"}]})
    assert said("is there a female doctor", clinic) == "Dr. Ana Ruiz, our physician: female, speaks Spanish."
    assert said("who speaks spanish", clinic) == "Dr. Ana Ruiz, our physician: female, speaks Spanish."
    assert said("is there a doctor who speaks french", clinic) is None
    assert said("who are the doctors", clinic) == "Our physicians are Dr. Ana Ruiz and Dr. Tom Lee."


def test_service_names_said_as_one_word_or_two() -> None:
    vet = Business.model_validate({"services": [{"name": "check up", "price": 60}, {"name": "nail trim", "aliases": ["pedicure"], "price": 15}]})
    assert said("how much is a check up", vet) == "Check up costs $60."
    assert said("how much for a checkup", vet) == "Check up costs $60."
    assert said("I wanted to check how much a nail trim is", vet) == "Nail trim costs $15."
    assert said("i'd like to know the price of a pedicure", vet) == "Nail trim costs $15."
    assert said("how much is the up", vet) is None


def test_a_day_not_known_for_certain_is_left_to_the_faq() -> None:
    faq = Business(hours={"monday": "9-5"}, faq=[{"questions": ["Are you open on holidays?"], "answer": "We close on public holidays."}])  # type: ignore[list-item]
    assert said("are you open on public holidays", faq) == "We close on public holidays."
    assert said("are you open on thanksgiving", faq) is None


@pytest.mark.parametrize(("question", "want"), [
    ("are you open on wednesday", "Yes, we're open on Wednesday, December 16th, from 8:30 am to noon."),  # a special day with a note that is no name
    ("what are your hours", "We're open Monday to Thursday 8:30 am to 4:30 pm, and Friday 8:30 am to noon; we are closed on Saturday and Sunday. "
                            "On Wednesday, December 16th, we're open from 8:30 am to noon."),
    ("are you open on new year's day", "No, we're closed on New Year's Day, Friday, January 1st."),
    ("are you open on monday at 4", "Yes, we're open at 4 pm on Monday, until 4:30 pm."),
    ("where do i park", "Park in the lot on Oak Street; the entrance is on the side."),  # not about Linda Park
    ("is a parking permit free", "Parking permit is free."),
    ("how much for a copy of a birth certificate", "Birth certificate copy costs $20."),
    ("what does a building permit cost", "There's no fixed price for building permit: depends on the project value."),
    ("who's the clerk", "Our town clerk is Linda Park."),
    ("when is tom ruiz in", "Tom Ruiz, our building inspector: in the office Tuesday mornings."),
    ("is tom ruiz in on tuesday", "Tom Ruiz, our building inspector: in the office Tuesday mornings."),  # no yes or no from "mornings"
    ("i have a water emergency what number do i call", "The water emergency number is 555 0399."),
    ("what's your email", "Our email is clerk@springfield.gov."),
    ("what's the website", "Our website is springfield.gov."),
    ("how do i pay my water bill", "You can pay online at our website or at the front desk."),
])
def test_town_office_on_a_friday_morning(question: str, want: str) -> None:
    assert said(question, TOWN, at(TOWN, 2026, 12, 11, 11, 0)) == want


@pytest.mark.parametrize(("question", "want"), [
    ("are you open", "Yes, we're open now until 7 pm."),
    ("what are your hours", "We're open Tuesday and Wednesday 10 am to 6 pm, Thursday 10 am to 7 pm, Friday 10 am to 6 pm, and Saturday 9 am to 5 pm; "
                            "we are closed on Monday and Sunday."),
    ("how much is a flat tyre repair", "Puncture repair costs £15."),
    ("how much is it to hire a bike", "Bike hire costs £30 per day."),
    ("how much is a service", "Tune up costs from £75."),
    ("who owns the shop", "Our owner is Priya Shah."),
    ("who does wheel builds", "Dan Cole, our mechanic: does wheel builds."),
    ("what's your number", "Our number is 0117 496 0123."),
    ("what's your returns policy", "Unused items can be returned within 30 days with a receipt."),
    ("do you guys open at 9 on saturday", "Yes, we're open at 9 am on Saturday, until 5 pm."),
])
def test_shop_on_a_thursday_evening(question: str, want: str) -> None:
    assert said(question, SHOP, at(SHOP, 2026, 12, 10, 18, 30)) == want


@pytest.mark.parametrize(("business", "question"), [
    (TOWN, "is there free parking"),  # the directions do not say
    (TOWN, "when is the building inspector in"),  # who, not when
    (TOWN, "are you open on martin luther king day"),
    (TOWN, "can i get married there"),
    (SHOP, "how much is bike rental for a week"),
    (SHOP, "can i return a bike i bought online"),
    (SHOP, "do you sell helmets"),
    (SHOP, "are you open on boxing day"),
])
def test_no_answer_from_the_town_office_or_the_shop(business: Business, question: str) -> None:
    assert said(question, business, at(business, 2026, 12, 11, 11, 0)) is None


def conversation(business: Business, now: dt.datetime, *questions: str) -> list[str | None]:
    previous: Asked | None = None
    out: list[str | None] = []
    for question in questions:
        found = answer(question, business, now, previous)
        out.append(found.text if found else None)
        previous = found.asked if found else previous
    return out


def test_follow_ups_reuse_the_previous_topic() -> None:
    assert conversation(CLINIC, MONDAY_MORNING, "are you open on saturday", "and on Sunday?", "what about tomorrow") == [
        "Yes, we're open on Saturday, from 9 am to 1 pm.", "No, we're closed on Sunday.",
        "Yes, we're open tomorrow, Tuesday, from 8 am to noon and 1 pm to 6 pm."]
    assert conversation(CLINIC, MONDAY_MORNING, "when do you close on friday", "and saturday?") == [
        "On Friday, we close at 6 pm.", "On Saturday, we close at 1 pm."]
    assert conversation(CLINIC, MONDAY_MORNING, "are you open on saturday", "and what time do you close?") == [
        "Yes, we're open on Saturday, from 9 am to 1 pm.", "On Saturday, we close at 1 pm."]
    assert conversation(CLINIC, MONDAY_MORNING, "are you open on saturday", "and what's your address?") == [
        "Yes, we're open on Saturday, from 9 am to 1 pm.", "We're at 14 Elm Street, Springfield."]
    assert conversation(CLINIC, MONDAY_MORNING, "are you open now", "and tomorrow?") == [
        "Yes, we're open now until noon, then again from 1 pm to 6 pm.", "Yes, we're open tomorrow, Tuesday, from 8 am to noon and 1 pm to 6 pm."]
    assert conversation(CLINIC, MONDAY_MORNING, "how much is a cleaning", "how about a filling?", "and whitening") == [
        "Cleaning costs $80.", "Filling costs from $120.", "Teeth whitening costs $300."]
    assert conversation(GARAGE, GARAGE_SATURDAY, "what number do I call for towing", "and the other one?") == [
        "The towing number is (815) 555-0171.", "Our number is (815) 555-0170."]
    assert conversation(GARAGE, GARAGE_SATURDAY, "who is the owner", "and the mechanics?") == [
        "Our owner is Bob Miller.", "Our mechanics are Tony Alvarez and Rita Shaw."]


def test_a_follow_up_needs_its_subject_to_fit_the_topic() -> None:
    assert conversation(CLINIC, MONDAY_MORNING, "how much is a cleaning", "and on saturday?") == ["Cleaning costs $80.", None]
    assert conversation(CLINIC, MONDAY_MORNING, "how much is a cleaning", "and the other one?") == ["Cleaning costs $80.", None]  # of six
    assert said("and on Saturday?") is None  # nothing before it
    assert conversation(CLINIC, MONDAY_MORNING, "how much is a cleaning", "and a filling on saturday?") == ["Cleaning costs $80.", None]
    assert conversation(CLINIC, MONDAY_MORNING, "what's your phone number", "and for emergencies?") == [
        "Our number is 555 0199.", "The emergency number is 555 0142."]


def test_the_day_is_the_business_zones() -> None:
    # 03:00 UTC on Tuesday is still Monday evening in New York: closed now, open again tomorrow, Tuesday
    tuesday_utc = dt.datetime(2026, 12, 8, 3, 0, tzinfo=dt.UTC)
    assert said("are you open", now=tuesday_utc) == "No, we're closed right now; we open again tomorrow, Tuesday, at 8 am."
    assert said("are you open today", now=tuesday_utc) == "Today we were open from 8 am to noon and 1 pm to 6 pm; we're closed now; we open again tomorrow, Tuesday, at 8 am."
