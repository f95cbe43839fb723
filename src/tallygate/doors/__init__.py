"""Inbound API formats ("doors"), one module each: a door parses its API's request into
the internal call and renders the answer, stream and errors back in its API's shape.
Where the door and the deployment speak the same API, it passes bytes through and only
reads usage from them."""
