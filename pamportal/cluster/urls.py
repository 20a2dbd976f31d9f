app_name = "cluster"
urlpatterns: list = []
