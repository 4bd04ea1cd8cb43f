"""The ground floor: pure audio and RTP (packets, stream statistics, codecs and resampling, VAD,
the playback reference). Imports nothing of the project; everything else may import it."""
