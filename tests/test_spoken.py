"""What Piper is given to say (providers/local/spoken.py), checked against the voice's own
phonemizer where the words' order matters."""

from __future__ import annotations

import pytest

from providers.local.models import JOE_VOICE, resolve
from providers.local.spoken import spoken


@pytest.mark.parametrize(("text", "said"), [
    ("It costs $14.", "It costs 14 dollars."),
    ("It's $14.50 or $1,250.", "It's 14 dollars 50 cents or 1250 dollars."),
    ("For emergencies call 555 0199.", "For emergencies call 5 5 5, 0 1 9 9."),
    ("Towing: 555-0142.", "Towing: 5 5 5, 0 1 4 2."),
    ("Call (555) 123-4567 or +49 151 1234567", "Call 5 5 5, 1 2 3, 4 5 6 7 or plus 4 9, 1 5 1, 1 2 3 4 5 6 7"),
    ("We close at 10:00 pm and open at 7:30 am, 9:05 on Sundays.", "We close at 10 pm and open at 7:30 am, 9 oh 5 on Sundays."),
    ("Mon-Fri 9-5, Sat 10–12.", "Monday to Friday 9 to 5, Sat 10 to 12."),
    ("**Yes**, we're `open`! 😀👍🏽", "Yes, we're open!"),
    ("# Hours\n- Monday: 8 am\n- Friday: 6 pm", "Hours. Monday: 8 am. Friday: 6 pm"),
    ("See [our page](https://example.com) or https://x.org/a", "See our page or our website"),
    ("Suite #4, open 24/7 & free.", "Suite number 4, open 24 7 and free."),
    ("14 Harbour Street, delivery in 30 to 40 minutes.", "14 Harbour Street, delivery in 30 to 40 minutes."),
])
def test_spoken_text(text, said):
    assert spoken(text) == said


def test_the_voice_reads_prices_in_the_right_order():
    from piper import PiperVoice

    voice = PiperVoice.load(str(resolve(JOE_VOICE, "")))
    as_written = "".join("".join(s) for s in voice.phonemize("It costs $14."))
    as_spoken = "".join("".join(s) for s in voice.phonemize(spoken("It costs $14.")))
    # espeak reads "$14" as "dollar fourteen"; spoken() makes it "fourteen dollars".
    assert as_written.index("dˈɑːlɚ") < as_written.index("fˈɔːɹtiːn")
    assert as_spoken.index("fˈɔːɹtiːn") < as_spoken.index("dˈɑːlɚz")
