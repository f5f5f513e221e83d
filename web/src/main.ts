import { createApp } from "vue";
import App from "./App.vue";
import { restore } from "./session";
import "./style.css";

restore();
createApp(App).mount("#app");
