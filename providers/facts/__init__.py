"""A business's facts: as data (schema.py), read from free text (text.py), answered from
(rules.py), and what the LLM says checked against them (verify.py)."""
