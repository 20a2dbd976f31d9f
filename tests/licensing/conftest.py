import pytest
from django.test import Client


@pytest.fixture
def admin(admin_user, login_client):
    return login_client(admin_user, Client())
