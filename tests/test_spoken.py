"""What Piper is given to say (providers/local/spoken.py), checked against the voice's own
phonemizer where the words' order matters."""

from __future__ import annotations

import pytest

from providers.local.models import JOE_VOICE, resolve
from providers.local.spoken import spoken


@pytest.mark.parametrize(("text", "said"), [
    ("It costs $14.", "It costs four-teen dollars."),
    ("It's $14.50 or $1,250.", "It's four-teen dollars, 50 cents or 1250 dollars."),
    ("Only $0.50, or €1.01, £45 or from $120.", "Only 50 cents, or 1 euro, 1 cent, 45 pounds or from 120 dollars."),
    ("For emergencies call 555 0199.", "For emergencies call 5 5 5, 0 1 9 9."),
    ("Towing: 555-0142.", "Towing: 5 5 5, 0 1 4 2."),
    ("Call (555) 123-4567 or +49 151 1234567", "Call 5 5 5, 1 2 3, 4 5 6 7 or plus 4 9, 1 5 1, 1 2 3 4 5 6 7"),
    ("We close at 10:00 pm and open at 7:30 am, 9:05 on Sundays.", "We close at 10 pm and open at 7:30 am, 9 oh 5 on Sundays."),
    # 13-19 stressed on "teen", as "fourteen" and "forty" are told apart on the phone
    ("At 14 Harbour Street, 13-19; not 5:15 pm, 17:16, 14B, 2014, 13.5 or 1,014.",
     "At four-teen Harbour Street, thir-teen to nine-teen; not 5:15 pm, 5:16 pm, 14B, 2014, 13.5 or 1,014."),
    ("Suite 3B at the back, or Suite 4C; 3D printing.", "Suite 3 B, at the back, or Suite 4C; 3D printing."),
    ("Call Dr Patel or Dr. Chen. Visit Harbour St. Ask Dr. Lopez on Oak Dr", "Call Doctor Patel or Doctor Chen. Visit Harbour Street. Ask Doctor Lopez on Oak Drive"),
    ("Mon-Fri 9-5, Sat 10–12.", "Monday to Friday 9 to 5, Saturday 10 to 12."),
    ("Tue through Thu, Sun: 11:30-noon. The sun sat.", "Tuesday to Thursday, Sunday: 11:30 to noon. The sun sat."),
    # 24-hour times (the profile writes hours so) in the caller's 12-hour clock; am/pm in one form
    ("Hours: 08:00-12:00, 13:00-18:00; last at 17:30.", "Hours: 8 am to noon, 1 pm to 6 pm; last at 5:30 pm."),
    ("Today 9 a.m.-1 P.M. Tomorrow at 9AM, 9:00-11:30.", "Today 9 am to 1 pm. Tomorrow at 9 am, 9 to 11:30."),
    # Addresses: the street type after a name, "Saint"/"Doctor" before one
    ("We're at 220 Oak Ave. Parking is free.", "We're at 220 Oak Avenue. Parking is free."),
    ("Go to 5 St. Mary's Rd., by 31 Main St. Ask Dr. Patel.", "Go to 5 Saint Mary's Road, by 31 Main Street. Ask Doctor Patel."),
    ("22 Elm Dr. is on 5th Ave. near 1st St.", "22 Elm Drive is on 5th Avenue near 1st Street."),
    ("Ste 200, Apt. 4, No. 5, ext. 12", "Suite 200, Apartment 4, number 5, extension 12"),
    ("**Yes**, we're `open`! 😀👍🏽", "Yes, we're open!"),
    ("# Hours\n- Monday: 8 am\n- Friday: 6 pm", "Hours. Monday: 8 am. Friday: 6 pm"),
    ("See [our page](https://example.com) or https://x.org/a", "See our page or our website"),
    ("Suite #4, open 24/7 & free.", "Suite number 4, open 24 7 and free."),
    ("14 Harbour Street, delivery in 30 to 40 minutes.", "four-teen Harbour Street, delivery in 30 to 40 minutes."),
])
def test_spoken_text(text, said):
    assert spoken(text) == said


def test_the_voice_reads_prices_in_the_right_order():
    from piper import PiperVoice

    voice = PiperVoice.load(str(resolve(JOE_VOICE, "")))
    as_written = "".join("".join(s) for s in voice.phonemize("It costs $14."))
    as_spoken = "".join("".join(s) for s in voice.phonemize(spoken("It costs $14.")))
    # espeak reads "$14" as "dollar FOURteen"; spoken() makes it "four-TEEN dollars".
    assert as_written.index("dˈɑːlɚ") < as_written.index("fˈɔːɹtiːn")
    assert as_spoken.index("fˈɔːɹtˈiːn") < as_spoken.index("dˈɑːlɚz")
