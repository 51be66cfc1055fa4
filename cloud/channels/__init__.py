"""Doors into the cloud other than the robot tunnel.

- ``phone_channel``    phones stream demonstrations over websockets: connections, hello and pairing, messages
- ``phone_messages``   the phone wire format: what a phone is, and the checks on its messages and step frames
- ``phone_ingest``     a phone's open episodes, written through the gateway's StoreWriter when stopped
- ``phone_foresight``  the phone policy's predicted trajectory, live and as each stored step's error
- ``phone_pairing``    one-time pairing tokens and the pairing URL as a terminal QR code
- ``phone_address``    the pairing URL's host and the phone page's certificate
- ``phone_http``       the phone page (``phone_page/``) and CA certificate over plain HTTP(S) on the same port
- ``takeover_messages`` the takeover page's wire format: hello, commands, live views as JSON
- ``takeover_channel`` a robot's takeover page (``takeover_page/``): an operator drives it from a browser
- ``dashboard_channel`` the fleet dashboard (``dashboard_page/``): live fleet, curves, episodes, operator commands
- ``dashboard_views``  what the dashboard shows, as JSON: fleet rows, per-version curves with intervals, episodes
- ``operator_access``  who may use the operator pages: an operator credential, its reach by policy
- ``openpi_server``    remote inference for openpi clients (openpi's policy-server protocol)

May import the gateway and everything below it.
"""
