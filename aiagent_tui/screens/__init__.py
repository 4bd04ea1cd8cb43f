"""The app's screens, one per file: the live calls (the app's first screen), the dialogs it opens
(help, provider, transfer, confirm), the whole log, and the call history with one call in full.
Their look is in ../app.tcss."""
