"""echo: returns the request body unchanged (and its content type); the cheapest function there is."""


def handle(event, context):
    content_type = event.headers.get("Content-Type", "application/octet-stream")
    return {"statusCode": 200, "body": event.body, "headers": {"Content-Type": content_type}}
