"""The admin port."""

from router.admin.app import create_admin_app

__all__ = ["create_admin_app"]
