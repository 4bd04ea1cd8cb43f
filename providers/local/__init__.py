"""The local provider: speech-to-text, an LLM (llama.cpp) and Piper TTS, all on this machine."""
