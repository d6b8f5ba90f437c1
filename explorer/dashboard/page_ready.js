// Tells the kernel, once, that the page has drawn the dashboard: the kernel then builds the heavy views,
// so that the prompt box never waits for them. It also tells the page's query (a teacher's page carries
// ?teacher=KEY): Voilà's preheated kernels ran the notebook before the page was asked for.
export default {
  /** @param {{ model: any, el: HTMLElement }} ctx */
  render({ model, el }) {
    el.style.display = "none";
    model.send({ event: "rendered", query: window.location.search });
  },
};
