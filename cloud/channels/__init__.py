"""Doors into the cloud other than the robot tunnel.

- ``phone_channel``  phones stream demonstrations over websockets; serves the phone page (``phone_page/``)
- ``phone_address``  the pairing URL's host and the phone page's certificate
- ``openpi_server``  remote inference for openpi clients (openpi's policy-server protocol)

May import the gateway and everything below it.
"""
