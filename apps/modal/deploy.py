"""What ``modal deploy -m apps.modal.deploy`` deploys: the fleet from the current settings.

Locally the settings come from the usual sources (``fleet deploy`` sets FLEET_CONFIG); in a
container, from the frozen copy the deploy passed along. Each class is a global of this module.
"""

from apps.modal.app import build_fleet_app, current_settings

fleet = build_fleet_app(current_settings(), globals())
app = fleet.app
