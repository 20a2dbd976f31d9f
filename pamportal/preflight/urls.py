app_name = "preflight"
urlpatterns: list = []
