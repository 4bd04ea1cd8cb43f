"""read_facts: what a profile's free-text facts state, read into Business; and nothing read where
the text is not clear (a wrong read would have the checker enforce a wrong fact)."""

from __future__ import annotations

import datetime as dt

import pytest

from providers.facts.schema import Business, Interval, Person, Service
from providers.facts.text import read_facts
from providers.profile import AgentProfile

WEEK = ("monday", "tuesday", "wednesday", "thursday", "friday")

DENTIST = """Northside Dental, 14 Harbour Street, Springfield.
Open Monday to Friday 8 am to 6 pm, Saturday 9 am to 1 pm, closed on Sunday and public holidays.
Dentists: Dr. Maria Lopez and Dr. James Chen. Hygienist: Anna Berg.
A first check-up costs 65 dollars; a cleaning costs 90 dollars.
Free parking behind the building. We accept cash, credit cards and debit cards.
Children are welcome from the age of three.
For a dental emergency outside opening hours call 555 0199."""

PIZZA = """Luigi's Pizzeria, 220 Oak Avenue.
Open every day from 11 am to 11 pm.
A large margherita costs 14 dollars; a large pepperoni costs 16 dollars.
Delivery within 3 miles, free for orders over 25 dollars, usually 30 to 40 minutes.
We have gluten-free crusts. The owner is Luigi Russo.
Table bookings for 6 or more people only."""

GARAGE = """Greenway Auto Repair, 9 Mill Road.
Open Monday to Saturday 7:30 am to 5:30 pm.
An oil change costs 49 dollars; a brake inspection is free.
We repair all makes, including electric cars. Courtesy cars are available if booked a day ahead.
The service manager is Tom Baker. Towing is available 24 hours on 555 0142."""

TOWN = """Springfield Town Hall, 1 Civic Square, Springfield.
Opening hours: Monday–Friday 9:00–17:30; Saturday 9:00–12:00; Sunday closed.
The town clerk is Jane Smith. For building permits call 020 7946 0110.
A parking permit costs £45 per year; a marriage licence costs £35."""

SHOP = """The Green Grocer, 5 Elm Street, Bristol BS1 4DJ.
Mon-Fri 8-6, Sat 9-1. Closed Sundays and bank holidays.
Call us on 0117 496 0958. Organic eggs are £3.50 a dozen. We take cards."""

BISTRO = """Chez Marie, Hauptstraße 5, 10115 Berlin.
Open Tuesday to Sunday, 12 noon to 10 pm; closed Monday. Kitchen closes at 9:30 pm.
Set lunch menu: €20. Wine by the glass from €6. Head chef: Marie Dubois."""


def read(text: str) -> Business:
    return read_facts(text)


def test_a_dental_practice() -> None:
    b = read(DENTIST)
    assert b.name == "Northside Dental"
    assert b.address == "14 Harbour Street, Springfield"
    assert b.hours == {**dict.fromkeys(WEEK, "08:00-18:00"), "saturday": "09:00-13:00", "sunday": "closed"}
    assert b.holidays_closed
    assert b.phones == {"emergency": "555 0199"}
    assert b.people == [Person(name="Dr. Maria Lopez", role="dentist"), Person(name="Dr. James Chen", role="dentist"),
                        Person(name="Anna Berg", role="hygienist")]
    assert b.services == [Service(name="first check-up", price=65), Service(name="cleaning", price=90)]
    assert b.faq == [] and b.directions == ""  # parking, cards, children: the free text's to say


def test_a_pizzeria_open_every_day() -> None:
    b = read(PIZZA)
    assert (b.name, b.address) == ("Luigi's Pizzeria", "220 Oak Avenue")
    assert b.hours == dict.fromkeys((*WEEK, "saturday", "sunday"), "11:00-23:00")
    assert b.people == [Person(name="Luigi Russo", role="owner")]
    # the delivery's condition ("free for orders over 25 dollars") is not a price
    assert b.services == [Service(name="large margherita", price=14), Service(name="large pepperoni", price=16)]
    assert b.phones == {}


def test_a_garage() -> None:
    b = read(GARAGE)
    assert (b.name, b.address) == ("Greenway Auto Repair", "9 Mill Road")
    assert b.hours == dict.fromkeys((*WEEK, "saturday"), "07:30-17:30")  # Sunday: not said, not known
    assert b.services == [Service(name="oil change", price=49), Service(name="brake inspection", price=0)]
    assert b.people == [Person(name="Tom Baker", role="service manager")]
    assert b.phones == {"towing": "555 0142"}  # "24 hours" is the towing's, not the opening hours


def test_a_town_office_in_british_style() -> None:
    b = read(TOWN)
    assert b.name == "Springfield Town Hall"
    assert b.hours == {**dict.fromkeys(WEEK, "09:00-17:30"), "saturday": "09:00-12:00", "sunday": "closed"}
    assert b.currency == "GBP"
    assert b.services == [Service(name="parking permit", price=45, price_note="per year"), Service(name="marriage licence", price=35)]
    assert b.people == [Person(name="Jane Smith", role="town clerk")]
    assert b.phones == {"main": "020 7946 0110"}


def test_a_shop_with_abbreviated_days() -> None:
    b = read(SHOP)
    assert b.name == "The Green Grocer"
    assert b.address == "5 Elm Street, Bristol BS1 4DJ"
    assert b.hours == {**dict.fromkeys(WEEK, "08:00-18:00"), "saturday": "09:00-13:00", "sunday": "closed"}
    assert b.holidays_closed
    assert b.phones == {"main": "0117 496 0958"}
    assert b.services == []  # "£3.50 a dozen": a price per something it does not read


def test_a_bistro_in_europe() -> None:
    b = read(BISTRO)
    assert (b.name, b.address, b.currency) == ("Chez Marie", "Hauptstraße 5, 10115 Berlin", "EUR")
    assert b.hours == {"monday": "closed", **dict.fromkeys(("tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"), "12:00-22:00")}
    assert b.services == [Service(name="set lunch menu", price=20), Service(name="wine by the glass", price=6, price_note="from")]
    assert b.people == [Person(name="Marie Dubois", role="head chef")]


@pytest.mark.parametrize(("text", "hours"), [
    ("Mon-Fri 8-6", dict.fromkeys(WEEK, "08:00-18:00")),
    ("Hours: M-F 7:00 AM - 6:00 PM, Sat 8:00 AM - 2:00 PM.", {**dict.fromkeys(WEEK, "07:00-18:00"), "saturday": "08:00-14:00"}),
    ("Hours are 8:00 a.m. to 4:30 p.m., Monday through Friday, except holidays.", dict.fromkeys(WEEK, "08:00-16:30")),
    ("Weekdays 9:00-17:00, weekends 10:00-16:00.", {**dict.fromkeys(WEEK, "09:00-17:00"), "saturday": "10:00-16:00", "sunday": "10:00-16:00"}),
    ("Tuesday and Thursday 9-12.", {"tuesday": "09:00-12:00", "thursday": "09:00-12:00"}),
    ("Open weekdays 8:00-18:00, lunch break 12 to 1.", dict.fromkeys(WEEK, "08:00-12:00, 13:00-18:00")),
    ("Open Monday to Friday 9-5, closed for lunch between 1 and 2.", dict.fromkeys(WEEK, "09:00-13:00, 14:00-17:00")),
    ("Open every day 11 am to 11 pm. Closed Mondays.", {"monday": "closed", **dict.fromkeys(WEEK[1:] + ("saturday", "sunday"), "11:00-23:00")}),
    ("Open daily 9-5, Sundays 10-4.", {**dict.fromkeys(WEEK + ("saturday",), "09:00-17:00"), "sunday": "10:00-16:00"}),
    ("We are open from 8 to 6 on weekdays and 9 to 1 on Saturdays.", {**dict.fromkeys(WEEK, "08:00-18:00"), "saturday": "09:00-13:00"}),
    ("Hours: 9am to 9pm Monday through Saturday, 10am-6pm Sunday.", {**dict.fromkeys(WEEK + ("saturday",), "09:00-21:00"), "sunday": "10:00-18:00"}),
    ("Opening hours: Monday and Wednesday 8 to 12 and 1 to 6.", {"monday": "08:00-12:00, 13:00-18:00", "wednesday": "08:00-12:00, 13:00-18:00"}),
    ("Monday: 9am - 5pm\nTuesday: 9am - 5pm\nSunday: closed", {"monday": "09:00-17:00", "tuesday": "09:00-17:00", "sunday": "closed"}),
    ("Sat & Sun closed.", {"saturday": "closed", "sunday": "closed"}),
    ("Open 11:30 am – 2:30 pm and 5 – 10 pm, Monday to Saturday.", dict.fromkeys(WEEK + ("saturday",), "11:30-14:30, 17:00-22:00")),
    ("Mon-Thu 8-8, Fri 8-5.", {**dict.fromkeys(WEEK[:4], "08:00-20:00"), "friday": "08:00-17:00"}),
    ("Open 24 hours at weekends.", {"saturday": "00:00-24:00", "sunday": "00:00-24:00"}),
    ("Open Friday to Monday, 10:00-16:00.", dict.fromkeys(("friday", "saturday", "sunday", "monday"), "10:00-16:00")),
    ("Open Thursday to Saturday 6 pm to 2 am.", dict.fromkeys(("thursday", "friday", "saturday"), "18:00-02:00")),
    ("Open Friday and Saturday 6 pm to midnight.", {"friday": "18:00-24:00", "saturday": "18:00-24:00"}),
    ("Open 24/7.", dict.fromkeys(WEEK + ("saturday", "sunday"), "00:00-24:00")),
    ("Open 7 days a week, 10 a.m. to 10 p.m.", dict.fromkeys(WEEK + ("saturday", "sunday"), "10:00-22:00")),
])
def test_hours_written_many_ways(text: str, hours: dict[str, str]) -> None:
    assert read(text).hours == hours


def test_hours_read_are_the_schemas_and_past_midnight_stays_past_midnight() -> None:
    b = read("Open Friday and Saturday 6 pm to midnight. Open Thursday 6 pm to 1 am.")
    assert b.weekly("friday") == (Interval(18 * 60, 24 * 60),)
    assert b.weekly("thursday") == (Interval(18 * 60, 25 * 60),)
    assert b.open_at(dt.datetime(2026, 12, 11, 23, 30, tzinfo=dt.UTC))  # a Friday, before midnight
    assert b.open_at(dt.datetime(2026, 12, 11, 0, 30, tzinfo=dt.UTC))  # Thursday night's last hour


@pytest.mark.parametrize(("text", "hours"), [
    # a day whose hours are not all said is left out, not given the others' hours
    ("Open Monday to Friday 8 am to 6 pm, Thursdays until 8 pm.", dict.fromkeys(("monday", "tuesday", "wednesday", "friday"), "08:00-18:00")),
    ("Open daily 9-5 except Wednesday.", dict.fromkeys(("monday", "tuesday", "thursday", "friday", "saturday", "sunday"), "09:00-17:00")),
    ("Open Monday to Friday 9-5 and Saturday mornings.", dict.fromkeys(WEEK, "09:00-17:00")),
    ("Open Monday to Friday 6-10. Saturday 1-5.", {"saturday": "13:00-17:00"}),  # 6 to 10: morning or evening?
    ("Open Monday to Friday 9-5, Sunday from 10.", dict.fromkeys(WEEK, "09:00-17:00")),
    ("Open Monday to Friday 9-5 and Saturday 9-1. Saturday 10-2.", dict.fromkeys(WEEK, "09:00-17:00")),  # Saturday said twice
    # what follows another thing's hours is that thing's
    ("Open every day 11 am to 11 pm; delivery Monday to Friday 5 pm to 10 pm.", dict.fromkeys(WEEK + ("saturday", "sunday"), "11:00-23:00")),
    ("Monday to Friday 8:00-18:00; Saturday 8:00-13:00 (emergencies only).", dict.fromkeys(WEEK, "08:00-18:00")),
    ("Open Mon-Fri 9-5 and every other Saturday 9-12.", dict.fromkeys(WEEK, "09:00-17:00")),
    ("Open Saturday 9-12 on the first Saturday of the month.", {}),
    ("Sun 10-1, bank holidays 2-4.", {"sunday": "10:00-13:00"}),
    ("Hours: Mo-Fr 7:00 AM - 6:00 PM, Sat 8:00 AM - 2:00 PM.", {}),  # "Mo-Fr" is not read: 7-6 is not Saturday's
    ("Tues-Fri 9-7, Sat 8-4. Late night Thursday until 9.", dict.fromkeys(("tuesday", "wednesday", "friday", "saturday"), "09:00-19:00")
     | {"saturday": "08:00-16:00"}),
    ("We are open weekdays except Wednesday from 9 to 5.", dict.fromkeys(("monday", "tuesday", "thursday", "friday"), "09:00-17:00")),
    ("Open bank holidays and Sundays 10-2.", {"sunday": "10:00-14:00"}),
    ("Open Monday to Friday 9-5. Saturday 10-2 by appointment.", dict.fromkeys(WEEK, "09:00-17:00")),
])
def test_unclear_days_are_left_out(text: str, hours: dict[str, str]) -> None:
    assert read(text).hours == hours


@pytest.mark.parametrize("text", [
    "We are a friendly family practice. Parking is free. We accept all major cards. Children are welcome from the age of three.",
    "Delivery takes 30 to 40 minutes. Kids aged 3 to 12 eat for half price.",
    "Open 9-5.",  # which days?
    "We are open Monday to Friday.",  # from when?
    "Open late on Fridays.",
    "Open every day from 11.",
    "Dr. Lopez works Monday and Thursday 9-1. Hygiene appointments Tuesday 2-6.",
    "Delivery Monday to Friday 5-10 pm. The kitchen is open until 10 pm. Happy hour Friday 5-7 pm.",
    "Summer hours: Monday to Friday 8-4.",
    "Open Monday to Friday 9-5. In August we open 10-2.",  # not the hours all year
    "Temporarily closed. Normally open Monday to Friday 9-5.",
    "We are not open on Sundays.",
    "Are you open on Sunday? We get asked that a lot.",
    "Closed for renovation from 1 to 14 August.",
    "Towing is available 24 hours on weekdays.",
])
def test_no_hours_are_invented(text: str) -> None:
    b = read(text)
    assert b.hours == {} and not b.holidays_closed


def test_a_narrower_statement_overrides_only_the_days_it_names() -> None:
    b = read("Open every day 9-5. Open Monday to Friday 9-5, Wednesday 9-1.")
    assert b.hours["wednesday"] == "09:00-13:00" and b.hours["monday"] == b.hours["sunday"] == "09:00-17:00"


@pytest.mark.parametrize(("text", "phones"), [
    ("Call 555 0100 for appointments or 555 0199 for emergencies. Fax: 555 0101.",
     {"booking": "555 0100", "emergency": "555 0199", "fax": "555 0101"}),
    ("Phone (212) 555-0147.", {"main": "(212) 555-0147"}),
    ("Call us on +44 20 7946 0958, or 020 7946 0959 after hours.", {"main": "+44 20 7946 0958", "after hours": "020 7946 0959"}),
    ("To order, ring 555 0177.", {"orders": "555 0177"}),
    ("Call 555 0100 or 555 0101.", {"main": "555 0100", "main 2": "555 0101"}),
    ("Tel. 555 0100. Emergency line: 555-0199 (24 hours).", {"main": "555 0100", "emergency": "555-0199"}),
    # numbers that are not phone numbers
    ("Our VAT number is 123 4567 89. Closed 2026-12-25. Over 1000000 pizzas served. It costs 1 200 000 euros.", {}),
])
def test_phone_numbers_by_purpose(text: str, phones: dict[str, str]) -> None:
    assert read(text).phones == phones


@pytest.mark.parametrize(("text", "people"), [
    ("Dentists: Dr. Maria Lopez and Dr. James Chen.", [("Dr. Maria Lopez", "dentist"), ("Dr. James Chen", "dentist")]),
    ("The owner is Luigi Russo.", [("Luigi Russo", "owner")]),
    ("Our practice manager is Sue.", [("Sue", "practice manager")]),
    ("Dr. Lopez and Dr. Chen are our dentists.", [("Dr. Lopez", "dentist"), ("Dr. Chen", "dentist")]),
    ("Ask for Tom Baker, our service manager.", [("Tom Baker", "service manager")]),
    ("Call Luigi, our owner.", [("Luigi", "owner")]),
    ("Appointments with Dr. Patel on Tuesdays.", [("Dr. Patel", "")]),  # a person; the role unsaid
    ("Who is the hygienist? Parking: Free Street. Owner: Luigi. Receptionist: Monday to Friday.", []),
])
def test_people_and_roles(text: str, people: list[tuple[str, str]]) -> None:
    assert [(p.name, p.role) for p in read(text).people] == people


@pytest.mark.parametrize(("text", "services", "currency"), [
    ("Haircut $20, beard trim $10.", [("haircut", 20, ""), ("beard trim", 10, "")], "USD"),
    ("Prices: Wash & cut £35, Blow dry £20.", [("wash & cut", 35, ""), ("blow dry", 20, "")], "GBP"),
    ("A colour starts at $60. Consultations from 120 dollars. Labour is 80 dollars an hour.",
     [("colour", 60, "from"), ("consultations", 120, "from"), ("labour", 80, "per hour")], "USD"),
    ("An MOT costs £45. The price of a tyre change is £20.50.", [("MOT", 45, ""), ("tyre change", 20.5, "")], "GBP"),
    ("Consultation: 40 euros. Follow-up visit: €25,50.", [("consultation", 40, ""), ("follow-up visit", 25.5, "")], "EUR"),
    ("We charge 65 dollars for a first check-up.", [("first check-up", 65, "")], "USD"),
])
def test_prices(text: str, services: list[tuple[str, float, str]], currency: str) -> None:
    b = read(text)
    assert [(s.name, s.price, s.price_note) for s in b.services] == services
    assert b.currency == currency


@pytest.mark.parametrize("text", [
    "Delivery is free for orders over 25 dollars.",
    "A cleaning costs 90 dollars with insurance, 120 without.",
    "Tickets are 10 euros for adults and 5 euros for children.",
    "Most repairs cost between 100 and 300 dollars.",
    "Parking is free. The fee is 20 dollars. Our prices start from $10.",
    "A cleaning costs 90 dollars. A cleaning costs 95 dollars.",  # said twice, differently
])
def test_prices_with_a_condition_or_no_service_are_left_out(text: str) -> None:
    assert read(text).services == []


@pytest.mark.parametrize(("text", "name"), [
    ("Welcome to Harbor Dental!", "Harbor Dental"),
    ("ACME Plumbing – 24 hour emergency plumbers.", "ACME Plumbing"),
    ("Luigi's, 2 Oak Lane.", "Luigi's"),
    ("Cash, cards and cheques accepted.", ""),
    ("Tel. 555 0100.", ""),
    ("Open Monday to Friday 9-5.", ""),
    ("Hours: Monday to Friday 9-5.", ""),
    ("With our new opening hours, we are open late.", ""),
    ("Family dentistry in the heart of Springfield.", ""),
    ("Northside Dental Practice is a family-run practice.", "Northside Dental Practice"),
    ("Harbor Dental Care.", "Harbor Dental Care"),
    ("Great Food, Great Prices.", ""),
    ("BEST PIZZA IN TOWN", ""),
    ("Great Food At Great Prices!", ""),
])
def test_the_name_is_the_first_sentences_leading_name(text: str, name: str) -> None:
    assert read(text).name == name


def test_addresses() -> None:
    assert read("We are at 9 Mill Road, next to the station.").address == "9 Mill Road"
    assert read("Main Street Pharmacy, 220 5th Avenue, New York, NY 10001.").address == "220 5th Avenue, New York, NY 10001"
    # two addresses: which is the business's?
    assert read("Welcome. Our shop is at 3 Elm Street and our warehouse is at 8 Dock Road.").address == ""
    assert read("Welcome. Free parking at 12 Back Lane.").address == ""  # the car park's


def test_nothing_to_read() -> None:
    assert read("").is_empty() and read("   \n ").is_empty()
    assert read("Be nice to callers.").is_empty()


def test_the_profile_knows_what_its_facts_state_under_what_its_business_says() -> None:
    profile = AgentProfile(facts=DENTIST, business=Business(name="Harbor Dental", hours={"saturday": "closed"}, currency="EUR"))
    known = profile.known
    assert known.name == "Harbor Dental"  # the structured data wins where it says something
    assert known.hours["saturday"] == "closed" and known.hours["monday"] == "08:00-18:00"
    assert known.phones == {"emergency": "555 0199"} and known.currency == "EUR"
    assert [p.name for p in known.people] == ["Dr. Maria Lopez", "Dr. James Chen", "Anna Berg"]
    assert AgentProfile(facts=GARAGE).known.hours_on(dt.date(2026, 12, 7)) == (Interval(7 * 60 + 30, 17 * 60 + 30),)  # a Monday
    assert AgentProfile().known.is_empty()
