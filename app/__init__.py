"""Coupon books and flash promos on a PostgreSQL-native locking core."""
