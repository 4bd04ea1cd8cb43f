"""The ground floor's other room: runtime basics every layer uses (the injectable clock, owned task
sets, rate-limited logging, backoff). Imports nothing of the project; everything else may import it."""
