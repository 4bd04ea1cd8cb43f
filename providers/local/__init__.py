"""The in-process model stages: Whisper (or pocketsphinx, Vosk), llama.cpp and Piper, each in a supervised worker process."""
