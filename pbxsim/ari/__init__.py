"""The simulated Asterisk's ARI, one module per resource (channels, bridges, playbacks, applications,
asterisk), the events WebSocket (events.py) and the HTTP routing and auth (http.py); model.py holds
what they share. pbxsim/server.py wires them into SimPBX."""
