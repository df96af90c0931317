from app.core.problems import Conflict, Unauthenticated


class EmailTaken(Conflict):
    slug, title = "email-taken", "Email already registered"


class BadCredentials(Unauthenticated):
    title = "Bad credentials"
